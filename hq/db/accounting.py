"""Accounting over the report views (``report_jobs``): jobs, core-hours and CPU hours per
user, day or host in a time span. It reads only what a report writer may read, so its
figures are the ones a lab's own reports get from the same views."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from hq.db.types import UtcDateTime

report_jobs = sa.table(
    "report_jobs", sa.column("owner"), sa.column("state"), sa.column("host"),
    sa.column("cores"), sa.column("run_s"), sa.column("wait_s"), sa.column("cpu_time_s"),
    sa.column("submitted_at", UtcDateTime()), sa.column("ended_at", UtcDateTime()))

GROUPS = ("user", "day", "host")


def accounting(conn: sa.Connection, since: dt.datetime, until: dt.datetime, by: str
               ) -> list[dict[str, Any]]:
    """One row per user (or day, or host) of the jobs that ended in [since, until)."""
    if by not in GROUPS:
        raise ValueError(f"by must be one of {GROUPS}")
    j = report_jobs.c
    key = {"user": j.owner, "host": sa.func.coalesce(j.host, "-"),
           "day": sa.func.date(j.ended_at)}[by].label("key")
    query = (sa.select(
        key, sa.func.count().label("jobs"),
        sa.func.sum(sa.case((j.state == "done", 1), else_=0)).label("done"),
        sa.func.sum(sa.case((j.state == "failed", 1), else_=0)).label("failed"),
        sa.func.sum(sa.case((j.state == "cancelled", 1), else_=0)).label("cancelled"),
        (sa.func.coalesce(sa.func.sum(j.cores * j.run_s), 0) / 3600.0).label("core_hours"),
        (sa.func.coalesce(sa.func.sum(j.cpu_time_s), 0) / 3600.0).label("cpu_hours"),
        sa.func.avg(j.wait_s).label("avg_wait_s"))
        .where(j.ended_at >= since, j.ended_at < until)
        .group_by(key).order_by(key))
    return [{"key": str(r.key), "jobs": int(r.jobs), "done": int(r.done or 0),
             "failed": int(r.failed or 0), "cancelled": int(r.cancelled or 0),
             "core_hours": round(float(r.core_hours or 0), 4),
             "cpu_hours": round(float(r.cpu_hours or 0), 4),
             "avg_wait_s": None if r.avg_wait_s is None else round(float(r.avg_wait_s), 3)}
            for r in conn.execute(query)]

"""Jobs and submissions: batched inserts and updates for hq-server, and the reads it needs.

hq-server keeps live jobs in memory and writes through here; every function takes the
caller's connection, so one transaction can carry a whole batch of changes.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from hq.db.model import hosts, jobs, submissions, users
from hq.states import FINISHED_JOB_STATES, JobState


@dataclass(frozen=True)
class SubmissionRow:
    id: int
    owner_id: int
    submitted_at: dt.datetime
    submit_host: str
    environment: dict[str, str]
    umask: int
    job_count: int


@dataclass(frozen=True)
class JobRow:
    """A jobs row with the owner's and host's names joined in."""

    id: int
    submission_id: int
    array_index: int | None
    owner_id: int
    owner: str
    name: str | None
    command: str
    shell: str
    cwd: str
    cores: int
    memory_mb: int | None
    priority: int
    group_name: str | None
    info_text: str | None
    time_limit_s: int | None
    estimated_time_s: int | None
    estimated_memory_mb: int | None
    stdout_path: str
    stderr_path: str
    log_path: str | None
    excluded_hosts: str
    requeue: bool
    signature: str | None
    state: JobState
    pending_reason: str | None
    host: str | None
    pid: int | None
    exit_code: int | None
    signal_number: int | None
    submitted_at: dt.datetime
    eligible_at: dt.datetime | None
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    cpu_time_s: float | None
    max_rss_kb: int | None
    restart_count: int


# Columns hq-server changes after a job was inserted; anything else is the signed spec.
OUTCOME_COLUMNS = frozenset({
    "state", "pending_reason", "host_id", "pid", "exit_code", "signal_number", "eligible_at",
    "started_at", "ended_at", "cpu_time_s", "max_rss_kb", "restart_count",
})


def insert_submission(conn: sa.Connection, submission: dict[str, Any],
                      job_rows: Sequence[dict[str, Any]]) -> None:
    """Insert one submission and its jobs (ids chosen by the caller) in the caller's
    transaction; executemany keeps 100,000 jobs to one round trip per chunk on MariaDB."""
    conn.execute(sa.insert(submissions), [submission])
    conn.execute(sa.insert(jobs), list(job_rows))


def update_jobs(conn: sa.Connection, changes: Iterable[tuple[int, dict[str, Any]]]) -> None:
    """Apply outcome changes, in order, in the caller's transaction.

    Each job's changes are folded into one row update first (a later value of a column wins),
    and only then are rows with the same set of columns written by one executemany: grouping
    the raw changes would let a group seen first (job K ended) carry a later change of another
    job (J ended) past that job's earlier one (J started), leaving J ``running`` for ever.
    """
    folded: dict[int, dict[str, Any]] = {}
    for job_id, values in changes:
        unknown = set(values) - OUTCOME_COLUMNS
        if unknown:
            raise ValueError(f"job {job_id}: not outcome columns: {sorted(unknown)}")
        folded.setdefault(job_id, {}).update(values)
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for job_id, values in folded.items():
        by_columns[tuple(sorted(values))].append({"b_id": job_id, **values})
    for columns, rows in by_columns.items():
        stmt = (sa.update(jobs).where(jobs.c.id == sa.bindparam("b_id"))
                .values({c: sa.bindparam(c) for c in columns}))
        conn.execute(stmt, rows)


def _job_query() -> sa.Select[Any]:
    return (sa.select(jobs, users.c.name.label("owner"), hosts.c.name.label("host"))
            .join(users, users.c.id == jobs.c.owner_id)
            .outerjoin(hosts, hosts.c.id == jobs.c.host_id))


_JOB_FIELDS = tuple(JobRow.__dataclass_fields__)


def _job_row(row: sa.RowMapping) -> JobRow:
    return JobRow(**{name: row[name] for name in _JOB_FIELDS})


def load_unfinished(conn: sa.Connection) -> tuple[list[SubmissionRow], list[JobRow]]:
    """Every job that has not finished, with the submissions they belong to (server start)."""
    unfinished = [s for s in JobState if s not in FINISHED_JOB_STATES]
    job_rows = [_job_row(r) for r in conn.execute(
        _job_query().where(jobs.c.state.in_(unfinished)).order_by(jobs.c.id)).mappings()]
    wanted = sorted({j.submission_id for j in job_rows})
    subs: list[SubmissionRow] = []
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start:start + 1000]
        subs.extend(SubmissionRow(**dict(r)) for r in conn.execute(
            sa.select(submissions).where(submissions.c.id.in_(chunk))).mappings())
    return subs, job_rows


def find_job(conn: sa.Connection, job_id: int) -> JobRow | None:
    row = conn.execute(_job_query().where(jobs.c.id == job_id)).mappings().first()
    return None if row is None else _job_row(row)


def list_finished_jobs(conn: sa.Connection, owner_id: int, *, limit: int,
                       ids: Sequence[int] | None = None) -> list[JobRow]:
    """An owner's finished jobs, newest first (for listings of history)."""
    query = (_job_query().where(jobs.c.owner_id == owner_id,
                                jobs.c.state.in_(list(FINISHED_JOB_STATES)))
             .order_by(jobs.c.id.desc()).limit(limit))
    if ids is not None:
        query = query.where(jobs.c.id.in_(list(ids)))
    return [_job_row(r) for r in conn.execute(query).mappings()]


def job_counts(conn: sa.Connection) -> dict[tuple[str, JobState], int]:
    """How many jobs each owner has in each state (served from the (owner, state) index)."""
    query = (sa.select(users.c.name, jobs.c.state, sa.func.count())
             .select_from(jobs).join(users, users.c.id == jobs.c.owner_id)
             .group_by(users.c.name, jobs.c.state))
    return {(name, state): n for name, state, n in conn.execute(query)}


def max_ids(conn: sa.Connection) -> tuple[int, int]:
    """The largest job and submission ids used so far (0 when none)."""
    job_max = conn.execute(sa.select(sa.func.max(jobs.c.id))).scalar() or 0
    sub_max = conn.execute(sa.select(sa.func.max(submissions.c.id))).scalar() or 0
    return int(job_max), int(sub_max)

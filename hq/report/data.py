"""The numbers behind each plot of the usage report, read from the ``report_jobs`` and
``report_hosts`` views only (doc/admin-guide.md gives the SQL a report writer runs for each).

Days are UTC days. A job counts for a window by the moment that matters to the plot: its
intervals on a host for *cores busy*, its end for *jobs and core-hours per user per day*, run
times and failures, its start for waiting times.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from hq.db.types import UtcDateTime

report_jobs = sa.table(
    "report_jobs", sa.column("job_id"), sa.column("owner"), sa.column("state"),
    sa.column("state_reason"), sa.column("host"), sa.column("cores"), sa.column("run_s"),
    sa.column("wait_s"), sa.column("exit_code"), sa.column("signal_number"),
    sa.column("submitted_at", UtcDateTime()), sa.column("started_at", UtcDateTime()),
    sa.column("ended_at", UtcDateTime()))
report_hosts = sa.table("report_hosts", sa.column("host"), sa.column("cores"),
                        sa.column("retired"))

# Histogram bins of waiting and run times, in seconds: about one decade each, at the units
# people think in (a second, ten seconds, a minute, ten minutes, an hour, six hours, a day).
DURATION_EDGES = (0.0, 1.0, 10.0, 60.0, 600.0, 3600.0, 21600.0, 86400.0)
DURATION_LABELS = ("< 1 s", "1-10 s", "10 s-1 min", "1-10 min", "10 min-1 h", "1-6 h",
                   "6 h-1 d", ">= 1 d")
# Widths of the time bins of cores busy: the smallest that gives at most MAX_TIME_BINS bins.
BIN_WIDTHS_S = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)
MAX_TIME_BINS = 200
ACTIVE_STATES = ("dispatched", "running")


@dataclass(frozen=True)
class HostBusy:
    """One host's cores busy over time: the mean number of cores held by jobs in each bin."""

    host: str
    cores: int | None           # its cores in etc/cluster.tab; None: no longer a known host
    busy: list[float]           # one per time bin of the report
    core_hours: float           # the area under the curve


@dataclass(frozen=True)
class UserDay:
    """The jobs of one user that ended on one UTC day."""

    day: str                    # YYYY-MM-DD
    owner: str
    jobs: int
    core_hours: float           # cores x run time


@dataclass(frozen=True)
class Histogram:
    """How many jobs fall in each of the DURATION_LABELS bins."""

    labels: list[str]
    counts: list[int]
    jobs: int                   # the sum of counts
    median_s: float | None


@dataclass(frozen=True)
class Failure:
    """Jobs that failed in the window for one reason."""

    reason: str                 # state_reason, else "exit code N" or "signal N"
    jobs: int


@dataclass(frozen=True)
class Report:
    """Everything the report shows for [since, until)."""

    since: dt.datetime
    until: dt.datetime
    bin_s: int
    bin_starts: list[dt.datetime]
    hosts: list[HostBusy]
    user_days: list[UserDay]
    wait: Histogram
    run: Histogram
    failures: list[Failure] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The numbers behind each plot, as ``--json`` prints them (times ISO 8601, UTC)."""
        data = asdict(self)
        data["since"], data["until"] = self.since.isoformat(), self.until.isoformat()
        data["bin_starts"] = [t.isoformat() for t in self.bin_starts]
        return data


def bin_width(since: dt.datetime, until: dt.datetime) -> int:
    """The time bin of cores busy for a window: the smallest width with at most 200 bins."""
    span = (until - since).total_seconds()
    for width in BIN_WIDTHS_S:
        if span / width <= MAX_TIME_BINS:
            return width
    return int(span // MAX_TIME_BINS) + 1


def load_report(conn: sa.Connection, since: dt.datetime, until: dt.datetime,
                now: dt.datetime | None = None) -> Report:
    """Read the report for [since, until); ``now`` ends the intervals of jobs still running
    (default: the current time)."""
    if until <= since:
        raise ValueError("until must be after since")
    now = dt.datetime.now(dt.UTC) if now is None else now
    width = bin_width(since, until)
    count = -(-int((until - since).total_seconds()) // width)
    starts = [since + dt.timedelta(seconds=i * width) for i in range(count)]
    ended = _ended(conn, since, until)
    return Report(
        since=since, until=until, bin_s=width, bin_starts=starts,
        hosts=_hosts_busy(conn, since, until, now, starts, width),
        user_days=_user_days(ended),
        wait=histogram(_waits(conn, since, until)),
        run=histogram([r.run_s for r in ended if r.run_s is not None]),
        failures=_failures(ended))


def _ended(conn: sa.Connection, since: dt.datetime, until: dt.datetime) -> list[sa.Row[Any]]:
    j = report_jobs.c
    return list(conn.execute(
        sa.select(j.owner, j.state, j.state_reason, j.cores, j.run_s, j.exit_code,
                  j.signal_number, j.ended_at)
        .where(j.ended_at >= since, j.ended_at < until).order_by(j.ended_at, j.job_id)))


def _waits(conn: sa.Connection, since: dt.datetime, until: dt.datetime) -> list[float]:
    j = report_jobs.c
    return [float(w) for (w,) in conn.execute(
        sa.select(j.wait_s).where(j.started_at >= since, j.started_at < until,
                                  j.wait_s.is_not(None)))]


def _hosts_busy(conn: sa.Connection, since: dt.datetime, until: dt.datetime,
                now: dt.datetime, starts: list[dt.datetime], width: int) -> list[HostBusy]:
    """Cores held per host and bin, from each job's [started_at, ended_at) interval (a job
    still dispatched or running holds its cores until ``now``)."""
    j, h = report_jobs.c, report_hosts.c
    capacity = {r.host: int(r.cores) for r in conn.execute(
        sa.select(h.host, h.cores).where(sa.not_(h.retired)))}
    rows = conn.execute(
        sa.select(j.host, j.cores, j.started_at, j.ended_at)
        .where(j.host.is_not(None), j.started_at.is_not(None), j.started_at < until,
               sa.or_(j.ended_at >= since,
                      sa.and_(j.ended_at.is_(None), j.state.in_(ACTIVE_STATES)))))
    held: dict[str, list[float]] = {name: [0.0] * len(starts) for name in capacity}
    for host, cores, started, ended in rows:
        begin = max(started, since)
        end = min(ended if ended is not None else max(now, started), until)
        if end <= begin:
            continue
        seconds = held.setdefault(host, [0.0] * len(starts))
        first = int((begin - since).total_seconds() // width)
        last = min(int((end - since).total_seconds() // width), len(starts) - 1)
        for i in range(first, last + 1):
            lo = max(begin, starts[i])
            hi = min(end, starts[i] + dt.timedelta(seconds=width))
            if hi > lo:
                seconds[i] += int(cores) * (hi - lo).total_seconds()
    return [HostBusy(host=name, cores=capacity.get(name),
                     busy=[round(s / width, 4) for s in held[name]],
                     core_hours=round(sum(held[name]) / 3600.0, 4))
            for name in sorted(held)]


def _user_days(ended: list[sa.Row[Any]]) -> list[UserDay]:
    jobs: dict[tuple[str, str], int] = defaultdict(int)
    core_s: dict[tuple[str, str], float] = defaultdict(float)
    for r in ended:
        key = (r.ended_at.date().isoformat(), r.owner)
        jobs[key] += 1
        core_s[key] += int(r.cores) * float(r.run_s or 0.0)
    return [UserDay(day=day, owner=owner, jobs=jobs[(day, owner)],
                    core_hours=round(core_s[(day, owner)] / 3600.0, 4))
            for day, owner in sorted(jobs)]


def histogram(durations: list[float]) -> Histogram:
    """Durations in seconds counted into the DURATION_EDGES bins, rounded to the
    millisecond (a negative one, from a clock step, counts as under a second)."""
    counts = [0] * len(DURATION_LABELS)
    # to the millisecond first: SQLite's julianday arithmetic makes an hour 3599.99996 s
    durations = [round(d, 3) for d in durations]
    for d in durations:
        counts[bisect.bisect_right(DURATION_EDGES, d, lo=1) - 1] += 1
    ordered = sorted(durations)
    median = None
    if ordered:
        mid = len(ordered) // 2
        median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return Histogram(labels=list(DURATION_LABELS), counts=counts, jobs=len(durations),
                     median_s=None if median is None else round(median, 3))


def failure_reason(reason: str | None, exit_code: int | None, signal: int | None) -> str:
    """What a failed job's row says about why: its reason, else its signal or exit code."""
    if reason:
        return reason
    if signal is not None:
        return f"signal {signal}"
    if exit_code is not None:
        return f"exit code {exit_code}"
    return "no reason recorded"


def _failures(ended: list[sa.Row[Any]]) -> list[Failure]:
    counts: dict[str, int] = defaultdict(int)
    for r in ended:
        if r.state == "failed":
            counts[failure_reason(r.state_reason, r.exit_code, r.signal_number)] += 1
    return [Failure(reason=reason, jobs=n)
            for reason, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]

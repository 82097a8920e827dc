"""The dashboard's long poll (``Watch``): one snapshot per change burst, each bounded.

A watch is answered at once when the journal's change counter differs from the caller's
``since``, else at the next change or after its timeout (at most ``MAX_WATCH_S``), a short
moment after the change so that a burst of job changes makes one answer. What it costs is
bounded: at most ``MAX_PENDING_WATCHES`` wait per connection, a snapshot holds at most
``limit`` job rows, arrays and jobs files folded into one row each from counters hq-server
keeps anyway, and pending reasons are worked out for each user's oldest
``REASONS_PER_USER`` pending jobs only (among their oldest ``REASON_SCAN`` unfinished
ones). Everything comes from memory; nothing is read from the database.

What a caller sees: every host (a cluster-wide fact) and every user's job counts by state,
as ``hq-client status`` shows; pending reasons and job rows only of the caller's own jobs.
An admin sees every user's.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref

from hq.errors import Busy
from hq.job import Job, Submission
from hq.protocol.messages import Watch, WatchHost, WatchJob, WatchQueue, WatchReply
from hq.server.core import Server, Session
from hq.server.views import why_pending
from hq.states import JobState

MAX_WATCH_S = 60.0
WATCH_COALESCE_S = 0.2
REASONS_PER_USER = 50
REASON_SCAN = 5_000
COMMAND_CHARS = 200
# a user's dashboards all come through their one user-server connection; an admin's each
# on its own connection
MAX_PENDING_WATCHES = {"userd": 8, "admin": 1}

_waiting: weakref.WeakKeyDictionary[Session, int] = weakref.WeakKeyDictionary()


async def watch(server: Server, session: Session, request: Watch) -> WatchReply:
    """The snapshot, once the change counter is past ``request.since`` (or at the timeout)."""
    changes = server.journal.changes
    timeout = min(request.timeout_s, MAX_WATCH_S)
    if changes.value == request.since and timeout > 0:
        pending = _waiting.get(session, 0)
        if pending >= MAX_PENDING_WATCHES.get(session.role, 1):
            raise Busy(f"{session.user.name} has {pending} watch request(s) waiting on this "
                       "connection already")
        _waiting[session] = pending + 1
        try:
            if await changes.next_change(timeout):
                await asyncio.sleep(WATCH_COALESCE_S)
        finally:
            _waiting[session] -= 1
    return snapshot(server, session, request.limit)


def snapshot(server: Server, session: Session, limit: int) -> WatchReply:
    """What the dashboard shows, as of now, for this caller."""
    admin = session.role == "admin"
    me = session.user.name
    reasons = PendingReasons(server)
    rows, more = job_rows(server, None if admin else me, limit, reasons)
    return WatchReply(counter=server.journal.changes.value, user=me, admin=admin,
                      cluster_active=server.cluster.active, hosts=host_rows(server),
                      queue=queue_rows(server, None if admin else me, reasons), jobs=rows,
                      more=more)


class PendingReasons:
    """``why_pending`` for the jobs of one snapshot, worked out once per kind of job: the
    elements of an array (and jobs that ask for the same) wait for the same reason, and
    finding it looks at every host and every running job."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.known: dict[tuple[object, ...], str] = {}

    def of(self, job: Job) -> str:
        if job.reason is not None:
            return job.reason
        cluster = self.server.cluster
        if cluster.deps.waits_for(job.id):
            return why_pending(self.server, job)   # names its own jobs; found at once
        sub = cluster.submissions.get(job.submission_id)
        capped = sub is not None and bool(sub.cap) and sub.active >= (sub.cap or 0)
        spec = job.spec
        key = (job.owner, spec.cores, spec.memory_mb, spec.gpus, spec.constraint,
               tuple(spec.excluded_hosts), job.submission_id if capped else None)
        found = self.known.get(key)
        if found is None:
            found = self.known[key] = why_pending(self.server, job)
        return found


def host_rows(server: Server) -> list[WatchHost]:
    found = []
    for host in sorted(server.cluster.hosts.values(), key=lambda h: h.name):
        if host.retired:
            continue
        reason = host.display_reason()
        found.append(WatchHost(name=host.name, state=host.display(), reason=reason,
                               cores=host.cores, cores_busy=host.used_cores,
                               running_jobs=len(host.jobs), load1=host.load1))
    return found


def queue_rows(server: Server, only: str | None, reasons: PendingReasons
               ) -> list[WatchQueue]:
    """Every user's counts by state; pending reasons of ``only``'s jobs (None: everyone's)."""
    cluster = server.cluster
    counts: dict[str, dict[str, int]] = {}
    for (owner, state), n in cluster.counts.items():
        if n and not state.finished:
            counts.setdefault(owner, {})[str(state)] = n
    rows = []
    for owner in sorted(counts):
        why_counts: dict[str, int] = {}
        if only is None or owner == only:
            # the oldest pending jobs (a capped array's waiting ones are in no queue head),
            # looking no further than REASON_SCAN of the user's unfinished jobs
            pending = (job for job in itertools.islice(
                cluster.unfinished_by_owner.get(owner, {}).values(), REASON_SCAN)
                if job.state is JobState.PENDING)
            for job in itertools.islice(pending, REASONS_PER_USER):
                why = reasons.of(job)
                why_counts[why] = why_counts.get(why, 0) + 1
        rows.append(WatchQueue(user=owner, counts=counts[owner], reasons=why_counts))
    return rows


def job_rows(server: Server, only: str | None, limit: int, reasons: PendingReasons
             ) -> tuple[list[WatchJob], bool]:
    """The newest ``limit`` rows of ``only``'s jobs (None: everyone's), newest first: the
    unfinished submissions (one row each, from their counters), then the jobs finished
    lately (one row per submission, folded from those hq-server still holds)."""
    cluster = server.cluster
    rows: list[WatchJob] = []
    for sub in reversed(cluster.submissions.values()):
        if only is not None and sub.owner != only:
            continue
        if len(rows) == limit:
            return rows, True
        rows.append(_unfinished_row(server, sub, reasons))
    finished: dict[int, list[Job]] = {}
    more = False
    for job in reversed(cluster.recent_finished.values()):
        if only is not None and job.owner != only:
            continue
        if job.submission_id in cluster.submissions:
            continue   # counted in its submission's row
        if job.submission_id not in finished:
            if len(rows) + len(finished) == limit:
                more = True
                break
            finished[job.submission_id] = []
        finished[job.submission_id].append(job)
    for jobs in finished.values():
        rows.append(_finished_row(jobs))
    return rows, more


def _unfinished_row(server: Server, sub: Submission, reasons: PendingReasons) -> WatchJob:
    cluster = server.cluster
    first = cluster.jobs.get(sub.first_job_id or 0)
    if sub.job_count == 1 and first is not None:
        reason = reasons.of(first) if first.state is JobState.PENDING else first.reason
        return _job_row(first, reason=reason,
                        ended=int(first.state.finished), active=int(first.state.active))
    unfinished = cluster.unfinished_by_submission.get(sub.id, 0)
    state = "running" if sub.active else "pending"
    return WatchJob(
        id=sub.first_job_id or 1, owner=sub.owner,
        name=None if first is None else first.spec.name, state=state, jobs=sub.job_count,
        ended=sub.job_count - unfinished, active=sub.active,
        array=first is not None and first.array_id is not None,
        cores=1 if first is None else first.spec.cores,
        command=None if first is None else _short(first.spec.command),
        stdout=None if first is None else first.stdout_path,
        submitted_at=None if sub.submitted_at is None else sub.submitted_at.timestamp())


def _finished_row(jobs: list[Job]) -> WatchJob:
    """A finished submission from the jobs of it hq-server still holds (newest first)."""
    head = jobs[-1]
    if len(jobs) == 1 and head.array_id is None:
        return _job_row(head, reason=head.reason, ended=1, active=0)
    failed = sum(1 for job in jobs if job.state is not JobState.DONE)
    return WatchJob(
        id=head.array_id or head.id, owner=head.owner, name=head.spec.name,
        state="failed" if failed else "done", jobs=len(jobs), ended=len(jobs),
        array=head.array_id is not None, cores=head.spec.cores, command=_short(head.spec.command),
        stdout=head.stdout_path,
        reason=f"{failed} of {len(jobs)} did not end done" if failed else None,
        submitted_at=head.submitted_at.timestamp())


def _job_row(job: Job, *, reason: str | None, ended: int,
             active: int) -> WatchJob:
    return WatchJob(id=job.id, owner=job.owner, name=job.spec.name, state=str(job.state),
                    ended=ended, active=active, host=job.host, reason=reason,
                    cores=job.spec.cores, command=_short(job.spec.command),
                    stdout=job.stdout_path,
                    submitted_at=job.submitted_at.timestamp())


def _short(command: str) -> str:
    """A command as a row shows it: a snapshot of 1,000 rows stays well under a frame."""
    return command if len(command) <= COMMAND_CHARS else command[:COMMAND_CHARS - 1] + "…"

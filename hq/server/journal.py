"""The one way hq-server records a change: check it, apply it in memory, write it, log it.

``Journal.job`` moves a job to a new state (``Cluster.transition`` checks the state machine
and keeps memory right), queues the row change and its event for the database, and logs one
line that starts with the job: ``job 42: pending -> dispatched on node07 (user alice)``.
``Journal.host_state`` does the same for a host. Everything recorded while the event loop runs
one callback goes to the database as one piece of a batch; ``committed()`` is the future of
that piece, for the acknowledgements that may only go out after the commit (DESIGN §2).

The other records hq-server keeps (a submission, the cluster switch, user-server and
hq-server instances, host load) are methods here too, so that no other module writes to the
store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from hq.db.daemons import (
    record_exec_server,
    record_server_start,
    record_server_stop,
    record_user_server_gone,
    record_user_server_seen,
)
from hq.db.dependencies import insert_dependencies, rewire_dependencies
from hq.db.events import Event, record_events
from hq.db.hosts import update_host
from hq.db.jobs import (
    insert_attempts,
    insert_jobs,
    insert_submission,
    set_array_cap,
    update_jobs,
)
from hq.db.settings import CLUSTER_ACTIVE, set_setting
from hq.db.users import save_usage
from hq.job import Job, Submission
from hq.server.changes import ChangeCounter
from hq.server.clock import Clock
from hq.server.dependencies import never_text
from hq.server.host import Host
from hq.server.state import Change, Cluster
from hq.server.store import Store
from hq.states import DependencyKind, EventKind, HostState, JobState

log = logging.getLogger("hq.server.jobs")
host_log = logging.getLogger("hq.server.hosts")


_ROUTINE = frozenset({(JobState.PENDING, JobState.DISPATCHED),
                      (JobState.DISPATCHED, JobState.RUNNING),
                      (JobState.RUNNING, JobState.DONE)})


def _failed(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("database: a change could not be recorded: %s", future.exception())


class Journal:
    """Records hq-server's changes, batched per turn of the event loop (see the module doc)."""

    def __init__(self, cluster: Cluster, store: Store, clock: Clock) -> None:
        self.cluster, self.store, self.clock = cluster, store, clock
        self._changes: list[Change] = []
        self._events: list[Event] = []
        self._host_rows: list[tuple[str, dict[str, Any]]] = []
        self._attempt_rows: list[dict[str, Any]] = []
        self._piece: asyncio.Future[Any] | None = None
        # pulsed whenever jobs finish (the wait requests look again)
        self.finished = asyncio.Event()
        self.changes = ChangeCounter()   # what the dashboards' Watch requests wait on
        self.users_by_name: dict[str, int] = {}   # user name -> id (set by the Server)
        # told when the last job of a submission ended (hq.server.notifications)
        self.submission_ended: Callable[[Submission], None] | None = None

    # --- state changes ------------------------------------------------------------------------

    def job(self, job: Job, new: JobState, *, reason: str | None = None, **fields: Any) -> None:
        """Move ``job`` to ``new`` with ``fields`` set; recorded with the next batch. The jobs
        its end dooms (a dependency that can never be met now) are cancelled with it, or
        keep waiting with the reason where their submission said so."""
        self.doomed(self._job(job, new, reason=reason, **fields))

    def doomed(self, doomed: list[tuple[Job, int, JobState]]) -> None:
        """(job, the job it waited for, how that one ended): a dependency that can never be
        met. The job is cancelled, or keeps waiting with the reason where its submission
        said so (--kill-on-invalid-dep=no); a cancel dooms its own dependants in turn."""
        while doomed:   # a chain of dependants, one after the other (no recursion)
            dependant, cause, state = doomed.pop()
            if dependant.state not in (JobState.PENDING, JobState.HELD):
                continue
            why = never_text(cause, state)
            sub = self.cluster.submissions.get(dependant.submission_id)
            if sub is not None and not sub.kill_on_invalid_dep:
                self._record(self.cluster.set_reason(dependant, why), why)
                continue
            doomed += self._job(dependant, JobState.CANCELLED, reason=why,
                                ended_at=self.clock.now())

    def reason(self, job: Job, reason: str | None) -> None:
        """A new reason for a job that stays in its state."""
        self._record(self.cluster.set_reason(job, reason), reason)

    def _job(self, job: Job, new: JobState, *, reason: str | None = None,
             **fields: Any) -> list[tuple[Job, int, JobState]]:
        change = self.cluster.transition(job, new, reason=reason, **fields)
        self._record(change, reason)
        if new.finished:
            self.finished.set()
            self.finished = asyncio.Event()
        if change.ended is not None:
            self.ended(change.ended)
        return [(dependant, job.id, new) for dependant in change.doomed]

    def ended(self, sub: Submission) -> None:
        """The last job of ``sub`` ended: whoever asked to be told is (in memory, before
        the commit)."""
        if self.submission_ended is not None:
            self.submission_ended(sub)

    def _record(self, change: Change, reason: str | None) -> None:
        job, new = change.job, change.new
        where = f" on {job.host}" if job.host and new.active else ""
        why = f": {reason}" if reason else ""
        line = f"job {job.id}: {change.old} -> {new}{where}"
        # the routine path of a job at debug level: the event log has every one, and at
        # thousands of jobs a second a log line each is what would cost
        level = logging.DEBUG if (change.old, new) in _ROUTINE else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "%s (user %s)%s", line, job.owner, why)
        self._changes.append(change)
        self._events.append(Event(at=self.clock.now(), kind=EventKind.JOB, job_id=job.id,
                                  host_name=job.host, user_name=job.owner,
                                  old_state=str(change.old), new_state=str(new),
                                  message=line + why))
        self._schedule()

    def attempt(self, row: dict[str, Any]) -> None:
        """The record of one run of a job that may run again (hq.server.retries)."""
        self._attempt_rows.append(row)
        self._schedule()

    def host_state(self, host: Host, new: HostState, reason: str | None) -> bool:
        """Set a host's reachability; recorded (and logged) only when it changed."""
        old = host.state
        if not self.cluster.set_host_state(host, new, reason, self.clock.monotonic()):
            return False
        why = f": {reason}" if reason else ""
        host_log.info("host %s: %s -> %s%s", host.name, old, new, why)
        self._host_change(host.name, {"state": new, "state_reason": reason},
                          f"host {host.name}: {new}{why}")
        return True

    def host_active(self, host: Host, active: bool, by: str) -> None:
        """The admin's switch on a host (activatehost / deactivatehost)."""
        host.active = active
        word = "activated" if active else "deactivated"
        host_log.info("host %s: %s by %s", host.name, word, by)
        self._host_change(host.name, {"active": active}, f"host {host.name}: {word} by {by}",
                          user=by)

    def host_drain(self, host: Host, drained: bool, by: str, reason: str | None) -> None:
        """The admin's drain switch on a host (hq-admin drain / resume)."""
        now = self.clock.now()
        host.drained, host.drain_reason = drained, reason if drained else None
        host.drained_by, host.drained_at = (by, now) if drained else (None, None)
        word = "drained" if drained else "resumed"
        why = f": {reason}" if drained and reason else ""
        host_log.info("host %s: %s by %s%s", host.name, word, by, why)
        self._host_change(host.name, {"drained": drained, "drain_reason": host.drain_reason,
                                      "drained_by": host.drained_by,
                                      "drained_at": host.drained_at},
                          f"host {host.name}: {word} by {by}{why}", user=by)

    def _host_change(self, name: str, values: dict[str, Any], message: str,
                     user: str | None = None) -> None:
        now = self.clock.now()
        self._host_rows.append((name, {**values, "updated_at": now}))
        self._events.append(Event(at=now, kind=EventKind.HOST, host_name=name, user_name=user,
                                  message=message))
        self._schedule()

    def committed(self) -> asyncio.Future[Any]:
        """Resolves once everything recorded so far has committed."""
        if self._piece is not None:
            return self._piece
        # Nothing waits to be written: earlier pieces are in the store's queue, in order, so an
        # empty piece resolves after them.
        return self.store.write(lambda conn: None, what="commit barrier")

    def _schedule(self) -> None:
        self.changes.bump()
        if self._piece is None:
            loop = asyncio.get_running_loop()
            self._piece = loop.create_future()
            # a failure is logged by _failed; whoever waits for the piece sees it too
            self._piece.add_done_callback(lambda f: f.cancelled() or f.exception())
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        piece, self._piece = self._piece, None
        changes, events, host_rows = self._changes, self._events, self._host_rows
        attempts = self._attempt_rows
        users = self.users_by_name
        usage = [(users[name], value, dt.datetime.fromtimestamp(at, dt.UTC))
                 for name, value, at in self.cluster.usage.take_changed() if name in users]
        self._changes, self._events, self._host_rows, self._attempt_rows = [], [], [], []
        assert piece is not None
        # Each changed job's whole outcome as memory has it now, not the changes one by one:
        # a job that started and ended in this piece is one row, and every row has the same
        # columns, so the whole piece is one UPDATE statement (run as one executemany).
        rows = [(job.id, job.outcome()) for job in {c.job.id: c.job for c in changes}.values()]
        host_ids = {name: host.id for name, host in self.cluster.hosts.items()}

        def work(conn: sa.Connection) -> None:
            if rows:
                update_jobs(conn, rows, host_ids)
            insert_attempts(conn, attempts)
            save_usage(conn, usage)
            for name, values in host_rows:
                update_host(conn, name, values)
            record_events(conn, events)

        future = self.store.write(work, what=f"{len(changes)} job and {len(host_rows)} host "
                                             "change(s)")
        future.add_done_callback(_failed)
        future.add_done_callback(lambda f: _chain(f, piece))

    # --- other records ------------------------------------------------------------------------

    async def submission(self, sub: Submission, owner_id: int, jobs: Sequence[Job],
                         dependencies: Sequence[tuple[int, int, DependencyKind]] = (),
                         rewired: Sequence[tuple[int, int, int]] = ()) -> None:
        """Record a new submission, its jobs, what they wait for (job, on, kind) and the
        jobs that now wait for them instead (job, old, new), in one transaction; refused at
        once when the database is down."""
        count = sub.job_count   # a big array's: its jobs stored here and laid out after
        span = f"{jobs[0].id}" if count == 1 else f"{jobs[0].id}-{jobs[0].id + count - 1}"
        event = Event(at=sub.submitted_at or self.clock.now(), kind=EventKind.JOB,
                      job_id=jobs[0].id, user_name=sub.owner, new_state=str(jobs[0].state),
                      message=f"submission {sub.id}: {count} job(s) {span} by {sub.owner} "
                              f"from {sub.submit_host}")

        def work(conn: sa.Connection) -> None:
            insert_submission(conn, sub, owner_id, jobs)
            insert_dependencies(conn, dependencies)
            rewire_dependencies(conn, rewired)
            record_events(conn, [event])

        await self.store.write(work, what=f"submission {sub.id} of {sub.owner}",
                               refuse_when_down=True)
        self.changes.bump()

    async def elements(self, sub: Submission, jobs: Sequence[Job]) -> None:
        """Record the next elements of an array being laid out (``hq.server.layout``), in
        one transaction; kept retrying while the database is down, as state changes are:
        the array was accepted."""
        await self.store.write(lambda conn: insert_jobs(conn, jobs),
                               what=f"elements {jobs[0].id}-{jobs[-1].id} of array "
                                    f"{sub.first_job_id}")
        self.changes.bump()

    def array_cap(self, sub: Submission) -> None:
        """An array's new cap (hq-client update --cap)."""
        event = Event(at=self.clock.now(), kind=EventKind.JOB, job_id=sub.first_job_id,
                      user_name=sub.owner,
                      message=f"array {sub.first_job_id}: cap {sub.cap or 'none'}")

        def work(conn: sa.Connection) -> None:
            set_array_cap(conn, sub.id, sub.cap)
            record_events(conn, [event])

        self.store.write(work, what=f"the cap of array {sub.first_job_id}"
                         ).add_done_callback(_failed)

    async def cluster_active(self, active: bool, by: str) -> None:
        """The cluster switch; recorded before it takes effect, so it survives a restart."""
        now = self.clock.now()
        word = "activated" if active else "deactivated"
        event = Event(at=now, kind=EventKind.CLUSTER, user_name=by,
                      message=f"cluster: {word} by {by}")

        def work(conn: sa.Connection) -> None:
            set_setting(conn, CLUSTER_ACTIVE, "yes" if active else "no", now)
            record_events(conn, [event])

        await self.store.write(work, what="cluster activation", refuse_when_down=True)
        self.cluster.active = active
        self.changes.bump()
        log.info("cluster: %s by %s", word, by)

    def exec_server(self, user_id: int, host: Host, pid: int | None, state: str,
                    reason: str | None) -> None:
        """A user's exec-server came up, was lost or let go (the exec_servers table)."""
        now = self.clock.now()

        def work(conn: sa.Connection) -> None:
            record_exec_server(conn, user_id, host.id, pid, state, reason, now)

        self.store.write(work, what=f"exec-server on {host.name}").add_done_callback(_failed)

    def user_server(self, user_id: int, pid: int, *, gone: bool) -> None:
        """The user_servers table: who ran a user-server, from when to when (for reports).
        The peer pid is on this host: user-servers run on hq-server's host."""
        now, host = self.clock.now(), socket.gethostname()
        work: Callable[[sa.Connection], None]
        if gone:
            def work(conn: sa.Connection) -> None:
                record_user_server_gone(conn, user_id, pid, now)
        else:
            def work(conn: sa.Connection) -> None:
                record_user_server_seen(conn, user_id, host, pid, now)
        self.store.write(work, what="user-server").add_done_callback(_failed)

    def host_load(self) -> bool:
        """Load and last heartbeat into the hosts table (report_hosts reads them): one write
        for all hosts now and then, not one per heartbeat. False when nothing was new."""
        rows = {h.name: {"load1": h.load1, "free_memory_mb": h.free_memory_mb,
                         "last_heartbeat_at": h.last_heartbeat_at}
                for h in self.cluster.hosts.values()
                if h.last_heartbeat_at is not None and h.last_heartbeat_at != h.recorded_heartbeat}
        if not rows:
            return False
        for name, values in rows.items():
            self.cluster.hosts[name].recorded_heartbeat = values["last_heartbeat_at"]

        def work(conn: sa.Connection) -> None:
            for name, values in rows.items():
                update_host(conn, name, values)

        self.store.write(work, what="host load").add_done_callback(_failed)
        return True

    async def server_started(self, hostname: str, pid: int, version: str) -> int:
        now = self.clock.now()
        return int(await self.store.write(
            lambda conn: record_server_start(conn, hostname, pid, version, now),
            what="server start", refuse_when_down=True))

    async def server_stopped(self, instance_id: int) -> None:
        now = self.clock.now()
        await self.store.write(lambda conn: record_server_stop(conn, instance_id, now),
                               what="server stop")


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())  # type: ignore[arg-type]
    else:
        target.set_result(None)


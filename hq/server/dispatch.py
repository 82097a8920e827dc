"""Placing jobs and following them: scheduling rounds, job reports, reconciliation, cancel.

A round takes the pending jobs of users whose user-server is connected, asks the pure
scheduler for placements, records ``dispatched`` (one transaction for the whole round) and
only after the commit sends ``run`` to each user-server. Reports coming back (``job_events``,
``sync``) are applied in arrival order, recorded in one batch, and acknowledged to the
exec-server only after they committed: so nothing is lost when any process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hq.db.events import record_events
from hq.db.hosts import update_host
from hq.db.jobs import update_jobs
from hq.server.scheduler import place_jobs
from hq.server.state import Change, Job
from hq.states import HostState, JobState

if TYPE_CHECKING:
    from hq.server.core import ServerContext, UserLink

log = logging.getLogger(__name__)

# A round runs at most this often: many triggers (jobs ending together) become one round.
ROUND_INTERVAL_S = 0.001
PERIODIC_ROUND_S = 5.0
# Pending jobs a round looks at beyond the free cores, per queue: how far small jobs can pass
# one that fits nowhere now.
BACKFILL_DEPTH = 32
HEALTH_CHECK_S = 0.5
HOST_RECORD_S = 10.0   # how often hosts' load and heartbeat times reach the database


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _from_epoch(value: Any) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(float(value), dt.UTC)


class Dispatcher:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._wake = asyncio.Event()
        self.finished = asyncio.Event()   # pulsed whenever jobs finish (for wait requests)
        self._hosts_recorded_at = 0.0

    # --- recording ----------------------------------------------------------------------

    def record(self, changes: list[Change], what: str) -> asyncio.Future[Any]:
        """Queue the row changes and events of ``changes`` as one piece of a batch."""
        rows = [(c.job_id, c.values) for c in changes]
        events = [c.event for c in changes]

        def work(conn: Any) -> None:
            update_jobs(conn, rows)
            record_events(conn, events)

        future = self.ctx.store.write(work, what=what)
        future.add_done_callback(_log_failure)
        if any(c.values["state"].finished for c in changes):
            self._pulse_finished()
        return future

    def _pulse_finished(self) -> None:
        self.finished.set()
        self.finished = asyncio.Event()

    # --- scheduling ---------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            # also a periodic round: unreachable hosts become worth another try by themselves
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PERIODIC_ROUND_S)
            self._wake.clear()
            try:
                self.round()
            except Exception:
                log.exception("scheduler: round failed")
            await asyncio.sleep(ROUND_INTERVAL_S)

    def round(self) -> None:
        cluster, links = self.ctx.cluster, self.ctx.links
        if not cluster.active or not cluster.pending_queues or not links:
            return
        slots = [h.slot() for h in cluster.usable_hosts()]
        slots = [s for s in slots if s.free_cores > 0
                 and (s.max_jobs is None or s.running_jobs < s.max_jobs)]
        if not slots:
            return
        per_queue = sum(s.free_cores for s in slots) + BACKFILL_DEPTH
        blocked = {owner: cluster.blocked_hosts(owner)
                   for owner in {owner for owner, _host in cluster.user_blocks}}
        pending = [j.pending_view if not blocked.get(j.owner) else
                   dataclasses.replace(j.pending_view, excluded_hosts=j.pending_view
                                       .excluded_hosts | blocked[j.owner])
                   for j in cluster.pending_heads(per_queue, links)]
        if not pending:
            return
        placements = place_jobs(pending, slots, cluster.running_per_user(), self.ctx.policy)
        if not placements:
            return
        now = _now()
        changes: list[Change] = []
        batches: dict[tuple[str, str], list[Job]] = defaultdict(list)
        for placement in placements:
            job = cluster.jobs[placement.job_id]
            # a first job there starts the clock of the lease; later ones must not reset it
            cluster.last_heard.setdefault((job.owner, placement.host), time.monotonic())
            changes.append(cluster.transition(job, JobState.DISPATCHED, now,
                                              host=placement.host))
            batches[(job.owner, placement.host)].append(job)
        future = self.record(changes, what=f"dispatch of {len(changes)} jobs")
        future.add_done_callback(lambda f: None if f.exception() else self._send_runs(batches))

    def _send_runs(self, batches: dict[tuple[str, str], list[Job]]) -> None:
        for (owner, host_name), jobs in batches.items():
            link = self.ctx.links.get(owner)
            # Still dispatched if it may not be sent now: the next user-server's sync decides.
            jobs = [j for j in jobs if j.state is JobState.DISPATCHED and not j.cancel_requested]
            if link is None or not jobs:
                continue
            link.send(run_message(self.ctx, host_name, jobs))

    # --- reports from user-servers ------------------------------------------------------

    def heard(self, link: UserLink, host: str) -> None:
        self.ctx.cluster.last_heard[(link.user, host)] = time.monotonic()

    def on_job_events(self, link: UserLink, host: str, events: list[dict[str, Any]]) -> None:
        self.heard(link, host)
        changes: list[Change] = []
        acks: list[int] = []
        now = _now()
        for event in events:
            job = self._own_job(link, event.get("id"))
            if job is None:
                continue
            if event.get("event") == "started":
                change = self._started(job, host, event, now)
            elif event.get("event") == "ended":
                change = self._ended(job, host, event, now)
                acks.append(job.id)
            else:
                log.warning("user-server of %s: unknown job event %r", link.user,
                            event.get("event"))
                continue
            if change is not None:
                changes.append(change)
        self._record_and_ack(link, host, changes, acks)

    def on_sync(self, link: UserLink, host: str, message: dict[str, Any]) -> None:
        """The exec-server's whole view of ``link.user``'s jobs on ``host``: reconcile."""
        cluster, now = self.ctx.cluster, _now()
        self.heard(link, host)
        cluster.user_blocks.pop((link.user, host), None)
        changes: list[Change] = []
        acks: list[int] = []
        seen: set[int] = set()
        for event in message.get("ended", []):
            job = self._own_job(link, event.get("id"))
            if job is not None:
                seen.add(job.id)
                acks.append(job.id)
                if (change := self._ended(job, host, event, now)) is not None:
                    changes.append(change)
        for entry in message.get("running", []):
            job = self._own_job(link, entry.get("id"))
            if job is None:
                continue
            seen.add(job.id)
            if job.state is JobState.DISPATCHED:
                changes.append(self._started(job, host, {**entry, "at": entry.get("started_at")},
                                             now))
            elif job.state.finished:
                # finished here (cancelled meanwhile) but still running there: stop it
                link.send({"type": "cancel", "host": host, "ids": [job.id],
                           "reason": "cancelled"})
            if job.cancel_requested and job.state.active:
                link.send({"type": "cancel", "host": host, "ids": [job.id],
                           "reason": "cancelled"})
        seen.update(int(i) for i in message.get("delivering", []))
        for job in cluster.active_jobs_of(link.user, host):
            if job.id in seen:
                continue
            changes.append(self.lost(job, now, f"not known to the exec-server on {host}"))
        self._record_and_ack(link, host, changes, acks)
        self.wake()

    def lost(self, job: Job, now: dt.datetime, why: str) -> Change:
        """A dispatched or running job that its host no longer has: requeue it or fail it."""
        cluster = self.ctx.cluster
        if job.state is JobState.DISPATCHED:
            return cluster.transition(job, JobState.PENDING, now,
                                      reason=f"requeued: dispatch lost ({why})", host=None)
        if job.cancel_requested:
            return cluster.transition(job, JobState.CANCELLED, now, reason=f"cancelled ({why})",
                                      ended_at=now)
        if job.spec.requeue:
            return cluster.transition(job, JobState.PENDING, now, reason=f"requeued: {why}",
                                      host=None, pid=None, started_at=None,
                                      restart_count=job.restart_count + 1)
        return cluster.transition(job, JobState.FAILED, now, reason=f"lost: {why}",
                                  ended_at=now)

    def on_undeliverable(self, link: UserLink, host: str, ids: Iterable[Any],
                         reason: str) -> None:
        """The user-server could not hand these jobs to ``host``: back to the queue."""
        now = _now()
        changes = []
        for job_id in ids:
            job = self._own_job(link, job_id)
            if job is not None and job.state is JobState.DISPATCHED and job.host == host:
                changes.append(self.ctx.cluster.transition(
                    job, JobState.PENDING, now, reason=f"host {host}: {reason}", host=None))
        if changes:
            self.record(changes, what=f"undeliverable jobs on {host}")
            self.wake()

    def on_host_state(self, host_name: str, state: str, reason: str | None, *,
                      user: str | None = None) -> None:
        """A host's reachability changed; with ``user``, only for that user (host key, login)."""
        host = self.ctx.cluster.hosts.get(host_name)
        if host is None:
            return
        if user is not None:
            if state == HostState.UNREACHABLE:
                log.info("host %s: unusable for %s: %s", host_name, user, reason)
                self.ctx.cluster.user_blocks[(user, host_name)] = (reason or "unreachable",
                                                                   time.monotonic())
            return
        new = HostState(state)
        if new in (HostState.UNREACHABLE, HostState.HEARTBEAT_LOST):
            # every failure restarts the wait before the next try, not only the first one:
            # else a dead host would be tried again at once, round after round
            host.state_since = time.monotonic()
        if host.state is not new or host.state_reason != reason:
            log.info("host %s: %s -> %s%s", host_name, host.state, new,
                     f": {reason}" if reason else "")
            host.state, host.state_reason = new, reason
            self.ctx.record_host(host_name, {"state": new, "state_reason": reason},
                                 f"host {host_name}: {new}" + (f": {reason}" if reason else ""))
            self.wake()

    def on_heartbeat(self, link: UserLink, host_name: str, message: dict[str, Any]) -> None:
        host = self.ctx.cluster.hosts.get(host_name)
        if host is None:
            return
        self.heard(link, host_name)
        host.load1 = message.get("load1")
        host.free_memory_mb = message.get("free_memory_mb")
        host.last_heartbeat_at = _now()
        if host.state is not HostState.UP:
            self.on_host_state(host_name, HostState.UP, None)

    # --- silence: heartbeats and the lease -----------------------------------------------

    async def watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_CHECK_S)
            try:
                self.check_health()
            except Exception:
                log.exception("health check failed")

    def check_health(self) -> None:
        """Mark hosts whose exec-servers went silent; requeue their jobs once the lease and
        its grace have run out (the exec-server has killed them by then, DESIGN §6)."""
        cluster, config = self.ctx.cluster, self.ctx.config
        now_m, changes = time.monotonic(), []
        for (owner, host_name), jobs in cluster.active_pairs().items():
            heard = cluster.last_heard.setdefault((owner, host_name), now_m)
            silence = now_m - heard
            host = cluster.hosts[host_name]
            # Only a connected user-server's silence says something about the host.
            if (silence > config.heartbeat_timeout_s and owner in self.ctx.links
                    and host.state in (HostState.UP, HostState.UNKNOWN)):
                self.on_host_state(host_name, HostState.HEARTBEAT_LOST,
                                   f"no heartbeat for {silence:.0f} s")
            if silence > config.lease_s + config.lease_grace_s:
                why = f"host {host_name}: no contact for {silence:.0f} s (lease expired)"
                changes += [self.lost(job, _now(), why) for job in jobs]
                del cluster.last_heard[(owner, host_name)]
        if changes:
            self.record(changes, what="jobs of silent hosts")
            self.wake()
        if now_m - self._hosts_recorded_at >= HOST_RECORD_S and self._record_host_load():
            self._hosts_recorded_at = now_m

    def _record_host_load(self) -> bool:
        """Load and last heartbeat into the hosts table (report_hosts reads them): one
        write for all hosts now and then, not one per heartbeat."""
        rows = {h.name: {"load1": h.load1, "free_memory_mb": h.free_memory_mb,
                         "last_heartbeat_at": h.last_heartbeat_at}
                for h in self.ctx.cluster.hosts.values()
                if h.last_heartbeat_at is not None and h.last_heartbeat_at != h.recorded_heartbeat}
        if not rows:
            return False
        for name, values in rows.items():
            self.ctx.cluster.hosts[name].recorded_heartbeat = values["last_heartbeat_at"]

        def work(conn: Any) -> None:
            for name, values in rows.items():
                update_host(conn, name, values)

        self.ctx.store.write(work, what="host load").add_done_callback(_log_failure)
        return True

    # --- transitions from reports -------------------------------------------------------

    def _own_job(self, link: UserLink, job_id: Any) -> Job | None:
        job = self.ctx.cluster.jobs.get(job_id) if isinstance(job_id, int) else None
        if job is None or job.owner != link.user:
            # A report about someone else's job is a forgery or a bug; either way ignore it.
            log.warning("user-server of %s: report about job %r ignored (not theirs or "
                        "unknown)", link.user, job_id)
            return None
        return job

    def _started(self, job: Job, host: str, event: dict[str, Any],
                 now: dt.datetime) -> Change | None:
        if job.state is not JobState.DISPATCHED or job.host != host:
            return None
        return self.ctx.cluster.transition(job, JobState.RUNNING, now, pid=event.get("pid"),
                                           started_at=_from_epoch(event.get("at")) or now)

    def _ended(self, job: Job, host: str, event: dict[str, Any],
               now: dt.datetime) -> Change | None:
        if not job.state.active or job.host != host:
            return None  # already recorded (a repeated report) or requeued meanwhile
        reason = event.get("reason")
        exit_code, signal = event.get("exit_code"), event.get("signal")
        if reason == "cancelled" or job.cancel_requested:
            new = JobState.CANCELLED
        elif exit_code == 0 and signal is None and not reason:
            new = JobState.DONE
        else:
            new = JobState.FAILED
            reason = reason or (f"killed by signal {signal}" if signal is not None
                                else f"exit code {exit_code}")
        started = job.started_at or _from_epoch(event.get("started_at"))
        return self.ctx.cluster.transition(
            job, new, now, reason=reason, exit_code=exit_code, signal=signal,
            pid=event.get("pid") or job.pid, started_at=started,
            ended_at=_from_epoch(event.get("at")) or now,
            cpu_time_s=event.get("cpu_time_s"), max_rss_kb=event.get("max_rss_kb"))

    def _record_and_ack(self, link: UserLink, host: str, changes: list[Change],
                        acks: list[int]) -> None:
        if changes:
            future = self.record(changes, what=f"reports of {link.user} from {host}")
            self.wake()
        elif acks:
            future = self.ctx.store.write(lambda conn: None, what="ack barrier")
        else:
            return
        if acks:
            def send_ack(f: asyncio.Future[Any]) -> None:
                if not f.exception():
                    link.send({"type": "ack", "host": host, "ids": acks})
            future.add_done_callback(send_ack)


def run_message(ctx: ServerContext, host_name: str, jobs: list[Job]) -> dict[str, Any]:
    submissions = {}
    for job in jobs:
        sub = ctx.cluster.submissions[job.submission_id]
        submissions[str(sub.id)] = {"environment": sub.environment, "umask": sub.umask}
    return {"type": "run", "host": ctx.cluster.hosts[host_name].wire(),
            "jobs": [{"id": j.id, "submission_id": j.submission_id, "spec": j.spec.to_wire()}
                     for j in jobs],
            "submissions": submissions}


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("database: a change could not be recorded: %s", future.exception())

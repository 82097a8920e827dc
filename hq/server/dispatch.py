"""Placing jobs and following them: scheduling rounds, job reports, reconciliation, cancel.

A round takes the pending jobs of users whose user-server is connected, asks the pure
scheduler for placements, records ``dispatched`` and only after the commit sends ``Run`` to
each user-server. Reports coming back (``JobEvents``, ``Sync``) are applied in arrival order,
recorded, and acknowledged to the exec-server only after they committed: so nothing is lost
when any process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable

from hq.job import Job
from hq.protocol.frames import printable
from hq.protocol.messages import (
    Ack,
    CancelJobs,
    Heartbeat,
    HostFacts,
    HostReach,
    HostStateReport,
    JobEnded,
    JobEvents,
    JobStarted,
    Run,
    RunJob,
    SubmissionEnv,
    Sync,
    Undeliverable,
)
from hq.server.clock import Clock
from hq.server.journal import Journal
from hq.server.links import Links, UserLink
from hq.server.scheduler import Policy, place_jobs
from hq.server.state import Cluster
from hq.states import HostState, JobState

log = logging.getLogger(__name__)

# A round runs at most this often: many triggers (jobs ending together) become one round.
ROUND_INTERVAL_S = 0.001
PERIODIC_ROUND_S = 5.0
# Pending jobs a round looks at beyond the free cores, per queue: how far small jobs can pass
# one that fits nowhere now.
BACKFILL_DEPTH = 32
CANCELLED = "cancelled"


def from_epoch(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


class Dispatcher:
    """Scheduling rounds, and what user-servers report about their users' jobs."""

    def __init__(self, cluster: Cluster, journal: Journal, links: Links, policy: Policy,
                 clock: Clock) -> None:
        self.cluster, self.journal, self.links = cluster, journal, links
        self.policy, self.clock = policy, clock
        self._wake = asyncio.Event()

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

    def round(self) -> int:
        """One scheduling round; returns how many jobs it dispatched."""
        cluster, links = self.cluster, self.links
        if not cluster.active or not cluster.pending_queues or not len(links):
            return 0
        now_m = self.clock.monotonic()
        slots = [h.slot(now_m, cluster.facts_timeout_s) for h in cluster.usable_hosts(now_m)]
        slots = [s for s in slots if s.free_cores > 0
                 and (s.max_jobs is None or s.running_jobs < s.max_jobs)]
        if not slots:
            return 0
        per_queue = sum(s.free_cores for s in slots) + BACKFILL_DEPTH
        blocked = {owner: cluster.blocked_hosts(owner, now_m)
                   for owner in {owner for owner, _host in cluster.user_blocks}}
        pending = []
        for job in cluster.pending_heads(per_queue, links):
            view = cluster.pending_view(job)
            if blocked.get(job.owner):
                view = dataclasses.replace(
                    view, excluded_hosts=view.excluded_hosts | blocked[job.owner])
            pending.append(view)
        if not pending:
            return 0
        placements = place_jobs(pending, slots, cluster.running_per_user(), self.policy)
        batches: dict[tuple[str, str], list[Job]] = defaultdict(list)
        for placement in placements:
            job = cluster.jobs[placement.job_id]
            # a first job there starts the clock of the lease; later ones must not reset it
            cluster.last_heard.setdefault((job.owner, placement.host), now_m)
            self.journal.job(job, JobState.DISPATCHED, host=placement.host)
            batches[(job.owner, placement.host)].append(job)
        if batches:
            self.journal.committed().add_done_callback(
                lambda f: None if f.exception() else self._send_runs(batches))
        return len(placements)

    def _send_runs(self, batches: dict[tuple[str, str], list[Job]]) -> None:
        for (owner, host_name), jobs in batches.items():
            # Still dispatched if it may not be sent now: the next user-server's sync decides.
            jobs = [j for j in jobs if j.state is JobState.DISPATCHED and not j.cancel_requested]
            if jobs:
                self.links.send(owner, self.run_message(host_name, jobs))

    def run_message(self, host_name: str, jobs: list[Job]) -> Run:
        submissions = {}
        for job in jobs:
            sub = self.cluster.submissions[job.submission_id]
            submissions[str(sub.id)] = SubmissionEnv(environment=sub.environment,
                                                     umask=sub.umask)
        return Run(host=self.cluster.hosts[host_name].address_info(),
                   jobs=[RunJob(j.id, j.submission_id, j.spec, j.restart_count) for j in jobs],
                   submissions=submissions)

    # --- cancelling ---------------------------------------------------------------------

    def cancel(self, jobs: Iterable[Job], by: str) -> dict[int, str]:
        """Cancel ``jobs`` (all of one owner): pending and held ones at once, dispatched and
        running ones through their exec-server. Returns each job's result word."""
        results: dict[int, str] = {}
        stops: dict[tuple[str, str], list[int]] = defaultdict(list)
        for job in jobs:
            if job.state.finished:
                results[job.id] = f"already {job.state}"
            elif job.state in (JobState.PENDING, JobState.HELD):
                self.journal.job(job, JobState.CANCELLED, reason=f"cancelled by {by}",
                                 ended_at=self.clock.now())
                results[job.id] = "cancelled"
            else:
                job.cancel_requested = True
                stops[(job.owner, job.host or "")].append(job.id)
                results[job.id] = "cancelling"
        for (owner, host), ids in stops.items():
            self.links.send(owner, CancelJobs(host=host, ids=ids, reason=CANCELLED))
        return results

    # --- reports from user-servers ------------------------------------------------------

    def heard(self, user: str, host: str) -> None:
        self.cluster.last_heard[(user, host)] = self.clock.monotonic()

    def on_job_events(self, link: UserLink, message: JobEvents) -> None:
        host = self._known_host(link, message.host)
        if host is None:
            return
        self.heard(link.user, host)
        acks: list[tuple[int, int]] = []
        now = self.clock.now()
        for event in message.events:
            job = self._own_job(link, event.id)
            if job is None:
                continue
            if isinstance(event, JobStarted):
                self._started(link, job, host, event.pid, event.at, event.attempt)
            else:
                self._ended(job, host, event, now)
                acks.append((job.id, event.attempt))
        self._ack_after_commit(link, host, acks)
        self.wake()

    def on_sync(self, link: UserLink, message: Sync) -> None:
        """The exec-server's whole view of ``link.user``'s jobs on a host: reconcile."""
        host = self._known_host(link, message.host)
        if host is None:
            return
        cluster, now = self.cluster, self.clock.now()
        self.heard(link.user, host)
        cluster.user_blocks.pop((link.user, host), None)
        acks: list[tuple[int, int]] = []
        seen: set[int] = set()
        for ended in message.ended:
            job = self._own_job(link, ended.id)
            if job is not None:
                if ended.attempt == job.restart_count:
                    seen.add(job.id)
                acks.append((job.id, ended.attempt))
                self._ended(job, host, ended, now)
        stop: list[tuple[int, int]] = []
        for entry in message.running:
            job = self._own_job(link, entry.id)
            if job is None:
                continue
            if entry.attempt != job.restart_count:
                stop.append((job.id, entry.attempt))   # a copy of an earlier run: stop it
                continue
            seen.add(job.id)
            if job.state is JobState.DISPATCHED:
                self._started(link, job, host, entry.pid, entry.started_at, entry.attempt)
            if job.state.finished or (job.cancel_requested and job.state.active):
                # finished here (cancelled meanwhile) but still running there: stop it
                stop.append((job.id, entry.attempt))
        if stop:
            self.links.send(link.user, CancelJobs(
                host=host, ids=[i for i, _a in stop], attempts=[a for _i, a in stop],
                reason=CANCELLED))
        seen.update(message.delivering)
        for job in cluster.active_jobs_of(link.user, host):
            if job.id not in seen:
                # it never reached that exec-server: no run of it was lost
                self.lost(job, f"not known to the exec-server on {host}", may_have_run=False)
        self._ack_after_commit(link, host, acks)
        self.wake()

    def lost(self, job: Job, why: str, *, may_have_run: bool = True) -> None:
        """A dispatched or running job that its host no longer has: requeue it or fail it
        (a cancel asked for meanwhile is never lost: the job ends cancelled). A run that may
        have started counts: the next one is another attempt, so that a late report about
        this one is never taken for the next."""
        now = self.clock.now()
        if job.cancel_requested:
            self.journal.job(job, JobState.CANCELLED, reason=f"cancelled ({why})", ended_at=now)
        elif job.state is JobState.DISPATCHED:
            self.journal.job(job, JobState.PENDING, reason=f"requeued: dispatch lost ({why})",
                             host=None,
                             restart_count=job.restart_count + (1 if may_have_run else 0))
        elif job.spec.requeue:
            self.journal.job(job, JobState.PENDING, reason=f"requeued: {why}", host=None,
                             pid=None, started_at=None, restart_count=job.restart_count + 1)
        else:
            self.journal.job(job, JobState.FAILED, reason=f"lost: {why}", ended_at=now)

    def on_undeliverable(self, link: UserLink, message: Undeliverable) -> None:
        """The user-server could not hand these jobs to a host: back to the queue."""
        host = self._known_host(link, message.host)
        if host is None:
            return
        for job_id in message.ids:
            job = self._own_job(link, job_id)
            if job is None or job.state is not JobState.DISPATCHED or job.host != host:
                continue
            if job.cancel_requested:
                self.journal.job(job, JobState.CANCELLED, reason="cancelled before it started",
                                 ended_at=self.clock.now())
            else:
                self.journal.job(job, JobState.PENDING, reason=f"host {host}: {message.reason}",
                                 host=None)
        self.wake()

    def on_host_state(self, link: UserLink, message: HostStateReport) -> None:
        """Whether a user-server could reach a host: it speaks for its user only (a host key,
        a login, or the host itself: the host monitor says what holds for everyone)."""
        host_name = self._known_host(link, message.host)
        if host_name is None:
            return
        if message.state == HostState.UNREACHABLE:
            log.info("host %s: unusable for %s: %s", host_name, link.user,
                     printable(message.reason))
            self.cluster.user_blocks[(link.user, host_name)] = (
                message.reason or "unreachable", self.clock.monotonic())
        elif self.cluster.user_blocks.pop((link.user, host_name), None) is not None:
            self.wake()

    def on_heartbeat(self, link: UserLink, message: Heartbeat) -> None:
        """A user's exec-server is alive: that renews what hq-server heard from it (for the
        lease of that user's jobs). What it says about its host is not taken: a user's word
        must not move the load rule or the host's state for everyone."""
        host_name = self._known_host(link, message.host)
        if host_name is not None:
            self.heard(link.user, host_name)
            self.cluster.user_blocks.pop((link.user, host_name), None)

    # --- facts from the host monitor (hq-server's own account) --------------------------------

    def on_host_facts(self, message: HostFacts) -> None:
        host = self.cluster.hosts.get(message.host or "")
        if host is None:
            return
        host.cpu_busy, host.hq_daemons = message.cpu_busy, message.hq_daemons
        host.load1, host.free_memory_mb = message.load1, message.free_memory_mb
        host.facts_at = self.clock.monotonic()
        host.last_heartbeat_at = self.clock.now()
        if host.state is not HostState.UP and self.journal.host_state(host, HostState.UP, None):
            self.wake()

    def on_host_reach(self, message: HostReach) -> None:
        host = self.cluster.hosts.get(message.host)
        if host is not None and self.journal.host_state(host, HostState(message.state),
                                                        message.reason):
            self.wake()

    # --- transitions from reports -------------------------------------------------------

    def _known_host(self, link: UserLink, host: str | None) -> str | None:
        if host is None or host not in self.cluster.hosts:
            log.warning("user-server of %s: report about unknown host %r ignored", link.user,
                        host)
            return None
        return host

    def _own_job(self, link: UserLink, job_id: int) -> Job | None:
        job = self.cluster.own_job(link.user, job_id)
        if job is None:
            # A report about someone else's job is a forgery or a bug; either way ignore it.
            log.warning("user-server of %s: report about job %r ignored (not theirs or "
                        "unknown)", link.user, job_id)
        return job

    def _started(self, link: UserLink, job: Job, host: str, pid: int, at: float,
                 attempt: int) -> None:
        if job.state is not JobState.DISPATCHED or job.host != host \
                or attempt != job.restart_count:
            return
        self.journal.job(job, JobState.RUNNING, pid=pid,
                         started_at=from_epoch(at) or self.clock.now())
        if job.cancel_requested:   # the cancel may have reached the host before the job did
            self.links.send(link.user, CancelJobs(host=host, ids=[job.id],
                                                  attempts=[attempt], reason=CANCELLED))

    def _ended(self, job: Job, host: str, event: JobEnded, now: dt.datetime) -> None:
        if not job.state.active or job.host != host or event.attempt != job.restart_count:
            return  # already recorded, requeued meanwhile, or an earlier run's end
        reason = event.reason
        if reason == CANCELLED or job.cancel_requested:
            new = JobState.CANCELLED
        elif event.exit_code == 0 and event.signal is None and not reason:
            new = JobState.DONE
        else:
            new = JobState.FAILED
            reason = reason or (f"killed by signal {event.signal}" if event.signal is not None
                                else f"exit code {event.exit_code}")
        self.journal.job(
            job, new, reason=reason, exit_code=event.exit_code, signal=event.signal,
            pid=event.pid or job.pid, started_at=job.started_at or from_epoch(event.started_at),
            ended_at=from_epoch(event.at) or now, cpu_time_s=event.cpu_time_s,
            max_rss_kb=event.max_rss_kb)

    def _ack_after_commit(self, link: UserLink, host: str,
                          acks: list[tuple[int, int]]) -> None:
        if not acks:
            return

        def send_ack(future: asyncio.Future[object]) -> None:
            if not future.exception() and self.links.is_current(link):
                self.links.send(link.user, Ack(host=host, ids=[i for i, _a in acks],
                                               attempts=[a for _i, a in acks]))

        self.journal.committed().add_done_callback(send_ack)


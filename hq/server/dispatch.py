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

from hq.config_syntax import duration_text
from hq.job import Job
from hq.protocol.frames import printable
from hq.protocol.messages import (
    Ack,
    CancelJobs,
    ExecServerReport,
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
    Withdraw,
)
from hq.server.clock import Clock
from hq.server.host import ExecServerView, Host
from hq.server.journal import Journal
from hq.server.links import Links, UserLink
from hq.server.queue_ahead import jobs_to_queue_ahead
from hq.server.retries import attempt_row, retry_reason
from hq.server.scheduler import (
    Placement,
    Policy,
    other_cores,
    place_jobs,
)
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
WITHDRAWN = "withdrawn"   # hq.execd.runner.REASON_WITHDRAWN: a queued job given back unstarted
TIME_LIMIT = "time limit"   # hq.execd.runner.REASON_TIME_LIMIT


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
        usable = cluster.usable_hosts(now_m)
        blocked = {owner: cluster.blocked_hosts(owner, now_m)
                   for owner in {owner for owner, _host in cluster.user_blocks}}
        batches: dict[tuple[str, str], list[Job]] = defaultdict(list)
        for placement in self._place_now(usable, blocked):
            job = cluster.jobs[placement.job_id]
            # a first job there starts the clock of the lease; later ones must not reset it
            cluster.last_heard.setdefault((job.owner, placement.host), now_m)
            cluster.grant(job.owner, placement.host, job.spec.cores)
            self._dispatch(job, placement.host)
            batches[(job.owner, placement.host)].append(job)
        self._queue_ahead(usable, blocked, batches)
        if batches:
            self.journal.committed().add_done_callback(
                lambda f: None if f.exception() else self._send_runs(batches))
        return sum(len(jobs) for jobs in batches.values())

    def _dispatch(self, job: Job, host: str) -> None:
        # GPUs are given out here, by device, so that no two jobs ever share one
        gpus = self.cluster.hosts[host].free_gpus(job.spec.gpus) if job.spec.gpus else None
        self.journal.job(job, JobState.DISPATCHED, host=host, gpu_ids=gpus)

    def _place_now(self, usable: list[Host],
                   blocked: dict[str, frozenset[str]]) -> list[Placement]:
        """Jobs placed on free cores, to start at once."""
        cluster, now_m = self.cluster, self.clock.monotonic()
        slots = [h.slot(now_m, cluster.facts_timeout_s) for h in usable]
        slots = [s for s in slots if s.free_cores > 0
                 and (s.max_jobs is None or s.running_jobs < s.max_jobs)]
        if not slots:
            return []
        per_queue = sum(s.free_cores for s in slots) + BACKFILL_DEPTH
        pending = []
        for job in cluster.pending_heads(per_queue, self.links):
            view = cluster.pending_view(job)
            if blocked.get(job.owner):
                view = dataclasses.replace(
                    view, excluded_hosts=view.excluded_hosts | blocked[job.owner])
            pending.append(view)
        if not pending:
            return []
        running = cluster.running_per_user()
        keys = cluster.usage.keys({owner: cores for owner, (_n, cores) in running.items()},
                                  self.clock.now().timestamp(), cluster.shares)
        return place_jobs(pending, slots, running, self.policy, keys, cluster.user_limits,
                          cluster.group_limits)

    def _queue_ahead(self, usable: list[Host], blocked: dict[str, frozenset[str]],
                     batches: dict[tuple[str, str], list[Job]]) -> None:
        """Hand short jobs to exec-servers ahead of a free core (``hq.server.queue_ahead``)."""
        waiting = {key[0] for key in self.cluster.pending_queues if key[0] in self.links}
        for job, pair in jobs_to_queue_ahead(self.cluster, self.policy, usable, blocked,
                                             waiting):
            self._dispatch(job, pair[1])
            batches[pair].append(job)

    def _send_runs(self, batches: dict[tuple[str, str], list[Job]]) -> None:
        for (owner, host_name), jobs in batches.items():
            # Still dispatched if it may not be sent now: the next user-server's sync decides.
            jobs = [j for j in jobs if j.state is JobState.DISPATCHED and j.host == host_name
                    and not j.cancel_requested and not j.hold_requested]
            if jobs:
                self.links.send(owner, self.run_message(host_name, jobs))

    def run_message(self, host_name: str, jobs: list[Job]) -> Run:
        submissions = {}
        for job in jobs:
            sub = self.cluster.submissions[job.submission_id]
            submissions[str(sub.id)] = SubmissionEnv(environment=sub.environment,
                                                     umask=sub.umask)
        owner = jobs[0].owner
        queues = (owner, host_name) in self.cluster.queue_pairs
        has_gpus = bool(self.cluster.hosts[host_name].gpus)
        return Run(host=self.cluster.hosts[host_name].address_info(),
                   jobs=[RunJob(j.id, j.submission_id, j.spec, j.attempt, j.array_id,
                                [g for g in (j.gpu_ids or "").split(",") if g]
                                if has_gpus else None)
                         for j in jobs],
                   submissions=submissions,
                   cores=self.cluster.allotment(owner, host_name) if queues else None)

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
                self.journal.job(job, JobState.CANCELLED,
                                 reason=job.cancel_reason or f"cancelled by {by}",
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
                self._started(link, job, host, event.pid, event.at,
                              self._attempt(link, job, event.attempt))
            else:
                self._ended(job, host, event, now, self._attempt(link, job, event.attempt))
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
                attempt = self._attempt(link, job, ended.attempt)
                if attempt == job.attempt:
                    seen.add(job.id)
                acks.append((job.id, ended.attempt))
                self._ended(job, host, ended, now, attempt)
        stop: list[tuple[int, int]] = []
        for entry in message.running:
            job = self._own_job(link, entry.id)
            if job is None:
                continue
            if self._attempt(link, job, entry.attempt) != job.attempt:
                stop.append((job.id, entry.attempt))   # a copy of an earlier run: stop it
                continue
            seen.add(job.id)
            if job.state is JobState.DISPATCHED:
                self._started(link, job, host, entry.pid, entry.started_at, job.attempt)
            if job.state.finished or (job.cancel_requested and job.state.active):
                # finished here (cancelled meanwhile) but still running there: stop it
                stop.append((job.id, entry.attempt))
        if stop:
            self.links.send(link.user, CancelJobs(
                host=host, ids=[i for i, _a in stop], attempts=[a for _i, a in stop],
                reason=CANCELLED))
        seen.update(message.delivering)
        seen.update(q.id for q in message.queued
                    if (job := cluster.own_job(link.user, q.id)) is not None
                    and q.attempt == job.attempt)
        cluster.set_queueing(link.user, host, message.queues)
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
            # It never started as far as anyone knows: no restart. Its exec-server does not
            # know it (may_have_run False): the next dispatch may be this very attempt again,
            # which the user-server's ledger hands over again as harmless. Lost with its host:
            # a new attempt, so that whatever that host did with this one is told from it.
            self.journal.job(job, JobState.PENDING, reason=f"requeued: dispatch lost ({why})",
                             host=None, attempt=job.attempt + (1 if may_have_run else 0))
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
                self.journal.job(job, JobState.CANCELLED,
                             reason=job.cancel_reason or "cancelled before it started",
                                 ended_at=self.clock.now())
            else:
                # it never reached the exec-server: the same attempt may go again
                self.journal.job(job, JobState.PENDING, reason=f"host {host}: {message.reason}",
                                 host=None, attempt=job.attempt)
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

    def on_exec_server(self, link: UserLink, message: ExecServerReport) -> None:
        host = self._known_host(link, message.host)
        if host is None:
            return
        view = self.cluster.exec_servers.get((link.user, host))
        if view is not None and (view.pid, view.state) == (message.pid or view.pid,
                                                           message.state):
            return
        self.cluster.exec_servers[(link.user, host)] = ExecServerView(
            message.pid or (view.pid if view else None), message.state, self.clock.now(),
            message.reason)
        self.journal.exec_server(link.user_id, self.cluster.hosts[host], message.pid,
                                 message.state, message.reason)

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
        timeout_s = self.cluster.facts_timeout_s
        before = other_cores(host.other_work(self.clock.monotonic(), timeout_s))
        host.cpu_busy, host.hq_daemons = message.cpu_busy, message.hq_daemons
        host.hq_jobs = message.hq_jobs
        host.load1, host.free_memory_mb = message.load1, message.free_memory_mb
        host.detected = (message.cores, message.memory_mb, message.gpus)
        host.facts_at = self.clock.monotonic()
        host.last_heartbeat_at = self.clock.now()
        if host.state is not HostState.UP and self.journal.host_state(host, HostState.UP, None):
            self.wake()
        elif other_cores(host.other_work(host.facts_at, timeout_s)) < before:
            # other work gave a core back: jobs the load rule held may go now, not at the
            # next periodic round (a report that counted a moment of load, such as jobs that
            # ended as it was taken, would otherwise hold a free host for PERIODIC_ROUND_S)
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
                or attempt != job.attempt:
            return
        self.journal.job(job, JobState.RUNNING, pid=pid,
                         started_at=from_epoch(at) or self.clock.now())
        if job.cancel_requested:   # the cancel may have reached the host before the job did
            self.links.send(link.user, CancelJobs(host=host, ids=[job.id],
                                                  attempts=[attempt], reason=CANCELLED))

    @staticmethod
    def _attempt(link: UserLink, job: Job, attempt: int) -> int:
        """The attempt a report is about; protocol 1 names none: the current one."""
        return attempt if link.version >= 2 else job.attempt

    def _ended(self, job: Job, host: str, event: JobEnded, now: dt.datetime,
               attempt: int) -> None:
        if not job.state.active or job.host != host or attempt != job.attempt:
            return  # already recorded, requeued meanwhile, or an earlier run's end
        reason = event.reason
        if reason == WITHDRAWN and job.state is JobState.DISPATCHED:
            self._withdrawn(job)
            return
        ran_to_its_end = not reason and (event.exit_code is not None or event.signal is not None)
        if reason == CANCELLED or (job.cancel_requested and not ran_to_its_end):
            new = JobState.CANCELLED
            reason = job.cancel_reason or reason
        elif event.exit_code == 0 and event.signal is None and not reason:
            # (also when a cancel was on its way: it came too late, the job had ended by
            # itself, and the database says what happened)
            new = JobState.DONE
        else:
            new = JobState.FAILED
            reason = reason or (f"killed by signal {event.signal}" if event.signal is not None
                                else f"exit code {event.exit_code}")
            if reason == TIME_LIMIT and job.spec.time_limit_s:
                reason = f"time limit {duration_text(job.spec.time_limit_s)} reached"
        sub = self.cluster.submissions.get(job.submission_id)
        if sub is not None and event.started_at is not None and event.at is not None:
            sub.runs += 1   # how long its jobs take: how deep the next ones may be queued
            sub.run_time_s += max(0.0, event.at - event.started_at)
        outcome = dict(exit_code=event.exit_code, signal=event.signal,
                       started_at=job.started_at or from_epoch(event.started_at),
                       ended_at=from_epoch(event.at) or now, cpu_time_s=event.cpu_time_s,
                       max_rss_kb=event.max_rss_kb)
        again = retry_reason(job, event.exit_code, event.signal, event.reason) \
            if new is JobState.FAILED else None
        if job.spec.retries:
            self.journal.attempt(attempt_row(job, new, reason, **outcome))
        if again is not None:
            self.journal.job(job, JobState.PENDING, reason=again, host=None, pid=None,
                             started_at=None, retry_count=job.retry_count + 1,
                             eligible_at=now)
            return
        self.journal.job(job, new, reason=reason, pid=event.pid or job.pid, **outcome)

    def _withdrawn(self, job: Job) -> None:
        """The exec-server gave a queued job back: it never started there."""
        if job.cancel_requested:
            self.journal.job(job, JobState.CANCELLED, reason="cancelled before it started",
                             ended_at=self.clock.now())
            return
        self.journal.job(job, JobState.PENDING, reason=None, host=None)
        if job.hold_requested:
            job.hold_requested = False
            self.journal.job(job, JobState.HELD)

    def withdraw(self, jobs: Iterable[Job]) -> list[Job]:
        """Ask for dispatched jobs back from exec-servers that keep a queue; returns the jobs
        asked for (each ends ``withdrawn``, or starts: the exec-server decides, atomically)."""
        asked: dict[tuple[str, str], list[Job]] = defaultdict(list)
        for job in jobs:
            if job.state is JobState.DISPATCHED and job.host is not None \
                    and (job.owner, job.host) in self.cluster.queue_pairs:
                asked[(job.owner, job.host)].append(job)
        for (owner, host), mine in asked.items():
            self.links.send(owner, Withdraw(host=host, ids=[j.id for j in mine],
                                            attempts=[j.attempt for j in mine]))
        return [job for mine in asked.values() for job in mine]

    def withdraw_from_host(self, host: str) -> int:
        """A host that takes no new jobs (deactivated, drained): its queued ones go back."""
        dispatched = [self.cluster.jobs[i] for i in self.cluster.hosts[host].jobs
                      if self.cluster.jobs[i].state is JobState.DISPATCHED]
        return len(self.withdraw(dispatched))

    def _ack_after_commit(self, link: UserLink, host: str,
                          acks: list[tuple[int, int]]) -> None:
        if not acks:
            return

        def send_ack(future: asyncio.Future[object]) -> None:
            if not future.exception() and self.links.is_current(link):
                self.links.send(link.user, Ack(host=host, ids=[i for i, _a in acks],
                                               attempts=[a for _i, a in acks]))

        self.journal.committed().add_done_callback(send_ack)


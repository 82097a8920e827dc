"""hq-server's live state in memory, and the one function that changes a job's state.

The database is the durable copy; this is the fast one. Every job transition goes through
``Cluster.transition``: it checks the state machine, updates the indexes (pending queue, host
usage, counts), logs one line that starts with the job, and returns the row change and event
row that the caller hands to the store in the same batch.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from hq.db.events import Event
from hq.jobspec import JobSpec, resolve_path
from hq.server.scheduler import HostSlot, PendingJob
from hq.states import EventKind, HostState, JobState, check_job_transition

log = logging.getLogger("hq.server.jobs")

# Job attributes that only hq-server's memory holds (not columns of the jobs table).
MEMORY_ONLY = frozenset({"cancel_requested"})

# Finished jobs kept in memory for quick show/wait answers; older ones are read from the DB.
RECENT_FINISHED = 20_000


@dataclass(slots=True)
class Submission:
    id: int
    owner: str
    environment: dict[str, str]
    umask: int
    unfinished: int = 0


@dataclass(slots=True, eq=False)
class Job:
    id: int
    submission_id: int
    owner: str
    owner_id: int
    spec: JobSpec
    submitted_at: dt.datetime
    state: JobState = JobState.PENDING
    pending_reason: str | None = None
    host: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    eligible_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    cpu_time_s: float | None = None
    max_rss_kb: int | None = None
    restart_count: int = 0
    cancel_requested: bool = False
    _pending_view: PendingJob | None = None

    @property
    def stdout_path(self) -> str:
        return resolve_path(self.spec.stdout, self.id, self.spec.array_index, self.spec.cwd)

    @property
    def stderr_path(self) -> str:
        return resolve_path(self.spec.stderr, self.id, self.spec.array_index, self.spec.cwd)

    @property
    def pending_view(self) -> PendingJob:
        if self._pending_view is None:
            self._pending_view = PendingJob(
                id=self.id, owner=self.owner, priority=self.spec.priority,
                cores=self.spec.cores, memory_mb=self.spec.memory_mb,
                excluded_hosts=frozenset(self.spec.excluded_hosts))
        return self._pending_view


@dataclass(slots=True, eq=False)
class Host:
    id: int
    name: str
    address: str
    ssh_port: int
    cores: int
    max_jobs: int | None
    memory_mb: int | None
    active: bool
    drained: bool
    drain_reason: str | None
    retired: bool = False
    state: HostState = HostState.UNKNOWN
    state_reason: str | None = None
    load1: float | None = None
    free_memory_mb: int | None = None
    last_heartbeat_at: dt.datetime | None = None
    recorded_heartbeat: dt.datetime | None = None  # the last one written to the database
    state_since: float = 0.0  # monotonic time of the last failure (or other state change)
    used_cores: int = 0
    used_memory_mb: int = 0
    jobs: set[int] = field(default_factory=set)

    def takes_jobs(self, retry_after_s: float) -> bool:
        if not self.active or self.drained or self.retired:
            return False
        if self.state in (HostState.UNREACHABLE, HostState.HEARTBEAT_LOST):
            # try again now and then: the next dispatch is the probe that finds it back
            return time.monotonic() - self.state_since > retry_after_s
        return self.state in (HostState.UP, HostState.UNKNOWN)

    def slot(self) -> HostSlot:
        free_memory = None if self.memory_mb is None else self.memory_mb - self.used_memory_mb
        return HostSlot(name=self.name, cores=self.cores,
                        free_cores=self.cores - self.used_cores, max_jobs=self.max_jobs,
                        running_jobs=len(self.jobs), memory_mb=self.memory_mb,
                        free_memory_mb=free_memory, load1=self.load1)

    def wire(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "ssh_port": self.ssh_port}


@dataclass(frozen=True, slots=True)
class Change:
    """What a transition wrote: a jobs-row update and an event row."""

    job_id: int
    values: dict[str, Any]
    event: Event


class Cluster:
    """Jobs, hosts, users and counts, with the invariants between them kept in one place."""

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        # pending jobs by (owner, priority), each in id order: a round looks only at the
        # head of each queue, so its cost does not grow with the number of pending jobs
        self.pending_queues: dict[tuple[str, int], dict[int, Job]] = {}
        self.recent_finished: OrderedDict[int, Job] = OrderedDict()
        self.hosts: dict[str, Host] = {}
        self.host_ids: dict[int, str] = {}
        self.submissions: dict[int, Submission] = {}
        self.counts: Counter[tuple[str, JobState]] = Counter()
        # (user, host) -> when hq-server last heard that user's exec-server there (monotonic)
        self.last_heard: dict[tuple[str, str], float] = {}
        # (user, host) -> (why, since): the user cannot reach the host (host key, login)
        self.user_blocks: dict[tuple[str, str], tuple[str, float]] = {}
        self.retry_after_s = 30.0  # [server] retry_unreachable: a failed host or block waits
        self.active = True
        self.next_job_id = 1
        self.next_submission_id = 1

    # --- building -----------------------------------------------------------------------

    def add_host(self, host: Host) -> None:
        self.hosts[host.name] = host
        self.host_ids[host.id] = host.name

    def add_submission(self, sub_id: int, owner: str, environment: dict[str, str],
                       umask: int) -> Submission:
        sub = Submission(sub_id, owner, environment, umask)
        self.submissions[sub_id] = sub
        return sub

    def add_job(self, job: Job) -> None:
        """Take a job into memory (new, or loaded at start) in whatever state it is in."""
        self.jobs[job.id] = job
        self.counts[(job.owner, job.state)] += 1
        if job.state.finished:
            self._remember_finished(job)
            return
        self.submissions[job.submission_id].unfinished += 1
        if job.state is JobState.PENDING:
            self._queue(job)
        elif job.state.active and job.host in self.hosts:
            self._occupy(job)

    # --- the one place a job changes state ---------------------------------------------

    def transition(self, job: Job, new: JobState, now: dt.datetime, *,
                   reason: str | None = None, **fields: Any) -> Change:
        """Move ``job`` to ``new``, set ``fields`` on it, and return what to record."""
        old = job.state
        check_job_transition(old, new)
        if old.active and job.host in self.hosts:
            self._release(job)
        if old is JobState.PENDING:
            self._unqueue(job)
        self.counts[(job.owner, old)] -= 1
        self.counts[(job.owner, new)] += 1
        job.state = new
        for name, value in fields.items():
            setattr(job, name, value)
        values: dict[str, Any] = {"state": new}
        for name in fields.keys() - MEMORY_ONLY:
            column = {"signal": "signal_number", "host": "host_id"}.get(name, name)
            value = getattr(job, name)
            if name == "host":
                value = None if value is None else self.hosts[value].id
            values[column] = value
        if new is JobState.PENDING:
            job.pending_reason = reason
            values["pending_reason"] = reason
            self._queue(job)
        elif new.finished:
            if reason is not None:
                job.pending_reason = reason
                values["pending_reason"] = reason
            sub = self.submissions.get(job.submission_id)
            if sub is not None:
                sub.unfinished -= 1
                if sub.unfinished <= 0:
                    del self.submissions[sub.id]
            self._remember_finished(job)
        if new.active and job.host is not None:
            self._occupy(job)
        where = f" on {job.host}" if job.host and new.active else ""
        why = f": {reason}" if reason else ""
        log.info("job %d: %s -> %s%s (user %s)%s", job.id, old, new, where, job.owner, why)
        event = Event(at=now, kind=EventKind.JOB, job_id=job.id, host_name=job.host,
                      user_name=job.owner, old_state=str(old), new_state=str(new),
                      message=f"job {job.id}: {old} -> {new}{where}{why}")
        return Change(job.id, values, event)

    def _queue(self, job: Job) -> None:
        key = (job.owner, job.spec.priority)
        queue = self.pending_queues.setdefault(key, {})
        in_order = not queue or job.id > next(reversed(queue))
        queue[job.id] = job
        if not in_order:  # a requeued job goes back to its place (rare)
            self.pending_queues[key] = dict(sorted(queue.items()))

    def _unqueue(self, job: Job) -> None:
        key = (job.owner, job.spec.priority)
        queue = self.pending_queues.get(key)
        if queue is not None:
            queue.pop(job.id, None)
            if not queue:
                del self.pending_queues[key]

    def _occupy(self, job: Job) -> None:
        host = self.hosts[job.host]  # type: ignore[index]
        if job.id not in host.jobs:
            host.jobs.add(job.id)
            host.used_cores += job.spec.cores
            host.used_memory_mb += job.spec.memory_mb or 0

    def _release(self, job: Job) -> None:
        host = self.hosts[job.host]  # type: ignore[index]
        if job.id in host.jobs:
            host.jobs.discard(job.id)
            host.used_cores -= job.spec.cores
            host.used_memory_mb -= job.spec.memory_mb or 0

    def _remember_finished(self, job: Job) -> None:
        self.recent_finished[job.id] = job
        while len(self.recent_finished) > RECENT_FINISHED:
            old_id, _ = self.recent_finished.popitem(last=False)
            self.jobs.pop(old_id, None)

    # --- queries ------------------------------------------------------------------------

    def pending_heads(self, per_queue: int, owners: Container[str]) -> list[Job]:
        """The first ``per_queue`` pending jobs of each (owner, priority) queue, in id order.

        A round can place at most as many jobs as there are free cores, so the heads are
        enough; the few extra let small jobs pass a big one that fits nowhere (backfill)."""
        heads = [job for (owner, _prio), queue in self.pending_queues.items() if owner in owners
                 for job in itertools.islice(queue.values(), per_queue)]
        heads.sort(key=lambda job: job.id)
        return heads

    def running_per_user(self) -> dict[str, tuple[int, int]]:
        usage: dict[str, list[int]] = {}
        for host in self.hosts.values():
            for job_id in host.jobs:
                job = self.jobs[job_id]
                entry = usage.setdefault(job.owner, [0, 0])
                entry[0] += 1
                entry[1] += job.spec.cores
        return {user: (n, cores) for user, (n, cores) in usage.items()}

    def usable_hosts(self) -> list[Host]:
        """Hosts a round may place jobs on now."""
        return [h for h in self.hosts.values() if h.takes_jobs(self.retry_after_s)]

    def blocked_hosts(self, owner: str) -> frozenset[str]:
        """Hosts ``owner`` cannot use now; a block lapses after a while, to be tried again."""
        now = time.monotonic()
        blocked = set()
        for (user, host), (_why, since) in list(self.user_blocks.items()):
            if now - since > self.retry_after_s:
                del self.user_blocks[(user, host)]
            elif user == owner:
                blocked.add(host)
        return frozenset(blocked)

    def active_pairs(self) -> dict[tuple[str, str], list[Job]]:
        """Dispatched and running jobs by (owner, host)."""
        pairs: dict[tuple[str, str], list[Job]] = {}
        for host in self.hosts.values():
            for job_id in host.jobs:
                job = self.jobs[job_id]
                pairs.setdefault((job.owner, host.name), []).append(job)
        return pairs

    def counts_of(self, owner: str) -> dict[str, int]:
        return {str(state): n for (who, state), n in self.counts.items() if who == owner and n}

    def active_jobs_of(self, owner: str, host: str | None = None) -> list[Job]:
        """The owner's dispatched and running jobs (on ``host`` if given)."""
        hosts = [self.hosts[host]] if host is not None else self.hosts.values()
        return [self.jobs[j] for h in hosts for j in h.jobs if self.jobs[j].owner == owner]

    def unfinished_of(self, owner: str) -> int:
        return sum(n for (who, state), n in self.counts.items()
                   if who == owner and not state.finished)

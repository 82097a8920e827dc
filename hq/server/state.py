"""hq-server's live state in memory: jobs, hosts, submissions and the indexes between them.

The database is the durable copy; this is the fast one. ``Cluster.transition`` and
``Cluster.set_host_state`` are the only code that changes a job's or a host's state: they
check the state machine (``hq.states``) and keep the indexes (pending queues, host usage,
counts) true. They record nothing and log nothing: ``hq.server.journal.Journal`` calls them,
records what they return and logs it, and it is the only caller outside tests.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

from sortedcontainers import SortedDict

from hq.constraints import parse as parse_constraint
from hq.constraints import satisfied
from hq.job import OUTCOME_FIELDS, Job, Submission
from hq.server.dependencies import Dependencies
from hq.server.host import ExecServerView, Host
from hq.server.scheduler import GroupLimits, PendingJob, UserLimits
from hq.server.usage import Usage
from hq.states import HostState, JobState, check_host_transition, check_job_transition

# Finished jobs kept in memory for quick show/wait answers; older ones are read from the DB.
RECENT_FINISHED = 20_000
# distinct (exclusions, constraint) pairs whose sets are shared; past it each job gets its own
MAX_EXCLUSION_SETS = 10_000


@dataclass(frozen=True, slots=True)
class Change:
    """What one job transition changed: the job, its old and new state, the attributes set,
    and the jobs its end doomed (a dependency of theirs can never be met now)."""

    job: Job
    old: JobState
    new: JobState
    values: dict[str, Any]   # Job attribute -> new value (hq.db.jobs maps them to columns)
    doomed: tuple[Job, ...] = ()
    ended: Submission | None = None   # the submission whose last job this was


# A pending queue: (owner, priority, the submission id of an array with a cap, else 0).
QueueKey = tuple[str, int, int]


class Cluster:
    """Jobs, hosts, users and counts, with the invariants between them kept in one place."""

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        # pending jobs by (owner, priority), each in id order: a round looks only at the
        # head of each queue, so its cost does not grow with the number of pending jobs. An
        # array with a cap has queues of its own, whose heads are as many as its cap leaves.
        self.pending_queues: dict[QueueKey, dict[int, Job] | SortedDict] = {}
        self.deps = Dependencies()
        self.usage = Usage()
        self.user_limits: dict[str, UserLimits] = {}   # etc/users max_running=, max_cores=
        self.group_limits: dict[str, GroupLimits] = {}   # [limits] group.NAME, @NAME lines
        self.shares: dict[str, float] = {}             # etc/users share=
        self._lacking: dict[str, frozenset[str]] = {}   # constraint -> hosts that lack it
        self._exclusions: dict[tuple[tuple[str, ...], str | None], frozenset[str]] = {}
        # (job, the job it waited for, how that ended) found doomed when loading
        self.doomed_at_start: list[tuple[int, int, JobState]] = []
        self._pending_views: dict[int, PendingJob] = {}
        self.recent_finished: OrderedDict[int, Job] = OrderedDict()
        self.hosts: dict[str, Host] = {}
        self.submissions: dict[int, Submission] = {}
        self.unfinished_by_submission: Counter[int] = Counter()
        # each owner's unfinished jobs in id order: listings cost what they answer
        self.unfinished_by_owner: dict[str, dict[int, Job]] = {}
        self.counts: Counter[tuple[str, JobState]] = Counter()
        # (user, host) -> when hq-server last heard that user's exec-server there (monotonic)
        self.last_heard: dict[tuple[str, str], float] = {}
        self.exec_servers: dict[tuple[str, str], ExecServerView] = {}   # (user, host)
        # (user, host) -> the cores that user's jobs may use there at once (the allotment
        # sent with each run); host.used_cores is their sum over the host's users. Jobs beyond
        # it wait in the exec-server's queue (queue_pairs: the exec-servers that keep one).
        self.allotments: dict[tuple[str, str], int] = {}
        self.pair_cores: Counter[tuple[str, str]] = Counter()  # cores of its active jobs
        self.queue_pairs: set[tuple[str, str]] = set()
        # (user, host) -> (why, since): the user cannot reach the host (host key, login)
        self.user_blocks: dict[tuple[str, str], tuple[str, float]] = {}
        self.retry_after_s = 30.0  # [server] retry_unreachable: a failed host or block waits
        self.facts_timeout_s = 30.0  # [server] monitor_timeout: older host facts are unknown
        self.active = True
        self.database_id = ""   # the database's identity: daemons key its jobs by it
        # submission id -> (owner, monotonic expiry): reserved for a submission to come
        self.reservations: dict[int, tuple[str, float]] = {}
        # submission id -> the jobs of its parts received so far (a streamed submission;
        # nothing of it is stored until its closing submit)
        self.submission_parts: dict[int, list[Any]] = {}
        self.next_job_id = 1
        self.next_submission_id = 1

    # --- building -----------------------------------------------------------------------

    def add_host(self, host: Host) -> None:
        self.hosts[host.name] = host

    def add_submission(self, sub: Submission) -> None:
        self.submissions[sub.id] = sub

    def add_job(self, job: Job) -> None:
        """Take a job into memory (new, or loaded at start) in whatever state it is in."""
        self.jobs[job.id] = job
        self.counts[(job.owner, job.state)] += 1
        if job.state.finished:
            sub = self.submissions.get(job.submission_id)
            if sub is not None:
                sub.finished[job.state] += 1
            self._remember_finished(job)
            return
        self.unfinished_by_submission[job.submission_id] += 1
        self.unfinished_by_owner.setdefault(job.owner, {})[job.id] = job
        sub = self.submissions.get(job.submission_id)
        if sub is not None:
            sub.unfinished[job.state] += 1
        if job.state is JobState.PENDING:
            self._queue(job)
        elif job.state.active and job.host in self.hosts:
            self._occupy(job)

    def expect_jobs(self, sub: Submission, state: JobState, count: int) -> None:
        """``count`` more jobs of ``sub`` are accepted and not stored yet (an array being
        laid out, ``hq.server.layout``): counted in ``state`` and as unfinished from now on,
        so that quotas, counts and the submission's end include them."""
        self.counts[(sub.owner, state)] += count
        self.unfinished_by_submission[sub.id] += count   # awaited: even cancelled ones
        (sub.finished if state.finished else sub.unfinished)[state] += count

    def add_expected(self, jobs: Sequence[Job]) -> list[Submission]:
        """Jobs counted by ``expect_jobs`` are stored now: unfinished ones into memory,
        counted once; finished ones (the tail of an array cancelled whole while it was laid
        out) only stop being awaited. Returns the submissions this ended."""
        ended = []
        for job in jobs:
            self.unfinished_by_submission[job.submission_id] -= 1
            if job.state.finished:
                if self.unfinished_by_submission[job.submission_id] <= 0:
                    del self.unfinished_by_submission[job.submission_id]
                    sub = self.submissions.pop(job.submission_id, None)
                    if sub is not None:
                        ended.append(sub)
                continue
            self.counts[(job.owner, job.state)] -= 1
            sub = self.submissions.get(job.submission_id)
            if sub is not None:
                sub.unfinished[job.state] -= 1
            self.add_job(job)
        return ended

    def retarget_expected(self, sub: Submission, old: JobState, new: JobState,
                          count: int) -> None:
        """``count`` jobs of ``sub`` not stored yet are in state ``new`` now, not ``old``
        (an array held, released or cancelled whole while it is laid out). A cancelled one
        stays awaited until it is stored, so that its submission ends only then."""
        self.counts[(sub.owner, old)] -= count
        self.counts[(sub.owner, new)] += count
        (sub.finished if old.finished else sub.unfinished)[old] -= count
        (sub.finished if new.finished else sub.unfinished)[new] += count


    # --- the one place a job or a host changes state ------------------------------------------

    def transition(self, job: Job, new: JobState, *, reason: str | None = None,
                   **fields: Any) -> Change:
        """Move ``job`` to ``new`` and set ``fields`` (outcome attributes of Job) on it.

        ``reason`` becomes the job's reason when it goes back to pending (cleared when none is
        given) or finishes (kept when none is given)."""
        old = job.state
        check_job_transition(old, new)
        unknown = fields.keys() - OUTCOME_FIELDS
        if unknown:
            raise ValueError(f"job {job.id}: not outcome fields: {sorted(unknown)}")
        if old.active and new is JobState.PENDING:
            # back in the queue without an end: unless the caller says otherwise (a dispatch
            # that never reached an exec-server), its next dispatch is another attempt, so that
            # whatever is heard later about this one is never taken for the next
            fields.setdefault("attempt", job.attempt + 1)
        # dispatched -> running keeps the host and its cores: nothing to move
        moves = not (old.active and new.active and "host" not in fields)
        if moves and old.active and job.host in self.hosts:
            self._release(job)
        if old is JobState.PENDING:
            self._unqueue(job)
        self.counts[(job.owner, old)] -= 1
        self.counts[(job.owner, new)] += 1
        sub = self.submissions.get(job.submission_id)
        if sub is not None:
            sub.unfinished[old] -= 1
            (sub.finished if new.finished else sub.unfinished)[new] += 1
        job.state = new
        for name, value in fields.items():
            setattr(job, name, value)
        values: dict[str, Any] = {"state": new, **fields}
        if new is JobState.PENDING or (new.finished and reason is not None):
            job.reason = reason
            values["reason"] = reason
        doomed: tuple[Job, ...] = ()
        ended = None
        if new is JobState.PENDING:
            self._queue(job)
        elif new.finished:
            doomed = self._dependencies_after(job)
            if old.active and job.started_at is not None and job.ended_at is not None:
                run_s = (job.ended_at - job.started_at).total_seconds()
                self.usage.add(job.owner, job.spec.cores * run_s, job.ended_at.timestamp())
            mine = self.unfinished_by_owner.get(job.owner)
            if mine is not None:
                mine.pop(job.id, None)
                if not mine:
                    del self.unfinished_by_owner[job.owner]
            self.unfinished_by_submission[job.submission_id] -= 1
            if self.unfinished_by_submission[job.submission_id] <= 0:
                del self.unfinished_by_submission[job.submission_id]
                ended = self.submissions.pop(job.submission_id, None)
            self._remember_finished(job)
        if moves and new.active and job.host is not None:
            self._occupy(job)
        return Change(job, old, new, values, doomed, ended)

    def set_reason(self, job: Job, reason: str | None) -> Change:
        """A new reason for a job that stays in its state (a pending job whose dependency
        can never be met, kept pending as its submission asked)."""
        job.reason = reason
        return Change(job, job.state, job.state, {"reason": reason})

    def _dependencies_after(self, job: Job) -> tuple[Job, ...]:
        """``job`` ended: the jobs waiting only for it join their queues; returns the ones
        it dooms."""
        freed, doomed = self.deps.ended(job)
        self.deps.forget(job.id)
        for job_id in freed:
            waiting = self.deps.waiting.pop(job_id, None)
            if waiting is not None:
                self._queue(waiting)
        return tuple(self.jobs[j] for j in doomed if j in self.jobs)

    def set_cap(self, sub: Submission, cap: int | None) -> None:
        """Change how many of an array's jobs may be dispatched or running at once: its
        pending jobs move to the queues that key says (a cost once, per change)."""
        moving = [job for key, queue in self.pending_queues.items() if key[0] == sub.owner
                  for job in queue.values() if job.submission_id == sub.id]
        for job in moving:
            self._unqueue(job)
        sub.cap = cap
        for job in moving:
            self._queue(job)

    def room(self, key: QueueKey, limit: int) -> int:
        """How many heads of the queue ``key`` a round may take, at most ``limit``."""
        if not key[2]:
            return limit
        sub = self.submissions.get(key[2])
        if sub is None or not sub.cap:
            return limit
        return max(0, min(limit, sub.cap - sub.active))

    def set_host_state(self, host: Host, new: HostState, reason: str | None,
                       now_m: float) -> bool:
        """Set a host's reachability; True when its state or reason changed."""
        check_host_transition(host.state, new)
        if new in (HostState.UNREACHABLE, HostState.HEARTBEAT_LOST):
            # every failure restarts the wait before the next try, not only the first one:
            # else a dead host would be tried again at once, round after round
            host.state_since = now_m
        if host.state is new and host.state_reason == reason:
            return False
        host.state, host.state_reason = new, reason
        return True

    def _queue_key(self, job: Job) -> QueueKey:
        sub = self.submissions.get(job.submission_id)
        capped = sub is not None and sub.cap is not None and sub.cap > 0
        return (job.owner, job.spec.priority, job.submission_id if capped else 0)

    def _queue(self, job: Job) -> None:
        if self.deps.blocks(job.id):
            self.deps.waiting[job.id] = job
            return
        key = self._queue_key(job)
        queue = self.pending_queues.setdefault(key, {})
        if queue and job.id < next(reversed(queue)) and not isinstance(queue, SortedDict):
            # a requeued job, or a big array's jobs stored after a later submission's: from
            # here on the queue keeps itself in order (each insertion O(log n), not a sort)
            queue = self.pending_queues[key] = SortedDict(queue)
        queue[job.id] = job

    def _unqueue(self, job: Job) -> None:
        if self.deps.waiting.pop(job.id, None) is not None:
            return
        key = self._queue_key(job)
        queue = self.pending_queues.get(key)
        if queue is not None:
            queue.pop(job.id, None)
            if not queue:
                del self.pending_queues[key]
        self._pending_views.pop(job.id, None)

    def _occupy(self, job: Job) -> None:
        host = self.hosts[job.host]  # type: ignore[index]
        if job.id not in host.jobs:
            host.jobs.add(job.id)
            host.used_memory_mb += job.spec.memory_mb or 0
            for device in (job.gpu_ids or "").split(","):
                if device:
                    host.gpu_holders[device] = job.id
            pair = (job.owner, host.name)
            self.pair_cores[pair] += job.spec.cores
            if pair not in self.queue_pairs:
                # no queue there: every job handed over starts at once and holds its cores
                self._allot(pair, self.pair_cores[pair])

    def _release(self, job: Job) -> None:
        host = self.hosts[job.host]  # type: ignore[index]
        if job.id in host.jobs:
            host.jobs.discard(job.id)
            host.used_memory_mb -= job.spec.memory_mb or 0
            for device in (job.gpu_ids or "").split(","):
                if host.gpu_holders.get(device) == job.id:
                    del host.gpu_holders[device]
            pair = (job.owner, host.name)
            left = self.pair_cores[pair] - job.spec.cores
            if left > 0:
                self.pair_cores[pair] = left
            else:
                del self.pair_cores[pair]
            # cores the user's jobs there can no longer fill go back to everyone
            self._allot(pair, min(self.allotments.get(pair, 0), max(0, left)))

    def _allot(self, pair: tuple[str, str], cores: int) -> None:
        old = self.allotments.get(pair, 0)
        if cores != old:
            self.hosts[pair[1]].used_cores += cores - old
            if cores:
                self.allotments[pair] = cores
            else:
                del self.allotments[pair]

    def grant(self, owner: str, host: str, cores: int) -> None:
        """``owner``'s jobs on ``host`` may use ``cores`` more at once (a job placed on free
        cores, to start now)."""
        pair = (owner, host)
        self._allot(pair, self.allotments.get(pair, 0) + cores)

    def set_queueing(self, owner: str, host: str, queues: bool) -> None:
        """Whether ``owner``'s exec-server on ``host`` keeps a queue of jobs handed over
        ahead of free cores (its user-server's sync says so)."""
        pair = (owner, host)
        if queues:
            self.queue_pairs.add(pair)
        elif pair in self.queue_pairs:
            self.queue_pairs.discard(pair)
            self._allot(pair, self.pair_cores.get(pair, 0))

    def allotment(self, owner: str, host: str) -> int:
        return self.allotments.get((owner, host), 0)

    def allotted_to(self) -> Counter[str]:
        """Each user's allotted cores over all hosts."""
        total: Counter[str] = Counter()
        for (owner, _host), cores in self.allotments.items():
            total[owner] += cores
        return total

    def _remember_finished(self, job: Job) -> None:
        self.recent_finished[job.id] = job
        while len(self.recent_finished) > RECENT_FINISHED:
            old_id, _ = self.recent_finished.popitem(last=False)
            self.jobs.pop(old_id, None)

    # --- queries ------------------------------------------------------------------------

    def pending_view(self, job: Job) -> PendingJob:
        """The scheduler's view of a pending job (made once per wait in the queue)."""
        view = self._pending_views.get(job.id)
        if view is None:
            excluded = self.exclusions(tuple(job.spec.excluded_hosts), job.spec.constraint)
            view = self._pending_views[job.id] = PendingJob(
                id=job.id, owner=job.owner, priority=job.spec.priority, cores=job.spec.cores,
                memory_mb=job.spec.memory_mb, excluded_hosts=excluded, gpus=job.spec.gpus)
        return view

    def exclusions(self, hosts: tuple[str, ...], constraint: str | None) -> frozenset[str]:
        """The hosts a job with these exclusions and this constraint may not use, one set
        shared by every job that asks the same: a constraint that 300 hosts lack would
        otherwise cost each of 100,000 pending jobs its own 300-name set (~16 KB)."""
        key = (hosts, constraint)
        found = self._exclusions.get(key)
        if found is None:
            found = frozenset(hosts)
            if constraint:
                found |= self.lacking(constraint)
            if len(self._exclusions) < MAX_EXCLUSION_SETS:
                self._exclusions[key] = found
        return found

    def lacking(self, constraint: str) -> frozenset[str]:
        """The hosts whose features do not meet ``constraint``: a job asking for it is
        excluded from them, so placement needs no rule of its own (one set per constraint,
        made again when the hosts change)."""
        found = self._lacking.get(constraint)
        if found is None:
            wanted = parse_constraint(constraint)
            found = self._lacking[constraint] = frozenset(
                h.name for h in self.hosts.values() if not satisfied(wanted, h.features))
        return found

    def hosts_changed(self) -> None:
        """Host configuration changed (reload): constraints are matched again."""
        self._lacking.clear()
        self._exclusions.clear()
        self._pending_views.clear()

    def pending_of(self, owner: str, limit: int) -> list[Job]:
        """``owner``'s first pending jobs, highest priority first, then in id order."""
        picked = [job for key, queue in self.pending_queues.items() if key[0] == owner
                  for job in itertools.islice(queue.values(), self.room(key, limit))]
        picked.sort(key=lambda job: (-job.spec.priority, job.id))
        return picked[:limit]

    def pending_heads(self, per_queue: int, owners: Container[str]) -> list[Job]:
        """The first ``per_queue`` pending jobs of each (owner, priority) queue, in id order.

        A round can place at most as many jobs as there are free cores, so the heads are
        enough; the few extra let small jobs pass a big one that fits nowhere (backfill)."""
        heads = [job for key, queue in self.pending_queues.items() if key[0] in owners
                 for job in itertools.islice(queue.values(), self.room(key, per_queue))]
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

    def usable_hosts(self, now_m: float) -> list[Host]:
        """Hosts a round may place jobs on at monotonic time ``now_m``."""
        return [h for h in self.hosts.values() if h.takes_jobs(now_m, self.retry_after_s)]

    def blocked_hosts(self, owner: str, now_m: float) -> frozenset[str]:
        """Hosts ``owner`` cannot use now; a block lapses after a while, to be tried again."""
        blocked = set()
        for (user, host), (_why, since) in list(self.user_blocks.items()):
            if now_m - since > self.retry_after_s:
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

    def state_now(self, job_id: int, recorded: JobState) -> JobState:
        """A job's state: memory's where hq-server holds the job (it may be ahead of the
        database), else the ``recorded`` one."""
        job = self.jobs.get(job_id)
        return recorded if job is None else job.state

    def own_job(self, owner: str, job_id: int) -> Job | None:
        """``owner``'s job ``job_id`` if hq-server holds it in memory; another user's job is
        None, exactly like one that does not exist."""
        job = self.jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

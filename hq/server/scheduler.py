"""Placement: which pending jobs start on which hosts in one scheduling round.

``place_jobs`` is a pure function over the in-memory state hq-server already holds: no I/O, no
clock, no database. hq-server calls it, then dispatches the placements it returns.

Order. Between users, with ``fair_share`` the next job comes from the user with the smallest
share key: their decayed past usage plus the cores they hold now (``hq.server.usage``; just
the running cores when no keys are given), counting what this round already placed (ties:
the user whose next job is older); without it, the user whose next job is oldest. Within
one user, higher priority first, then FIFO by id: ``-p`` orders a user's own jobs only, so
no user passes another's jobs with ``-p 1000``.

Fit. A job fits a host when the host is not in the job's exclusions, has the free cores, is
below ``max_jobs``, has the free memory (checked only when both sides state memory) and the
free GPUs the job asks for, and passes the load rule (``load_headroom``). Among the hosts
that fit, the one left with the most free cores wins (spreads the load); ties go to the
first name.

Limits. An owner at their ``max_running`` (their own, else the policy's), or in a group at its
``max_running``, gets no job this round; a job over the cores left to its owner or to one of
the owner's groups waits while smaller ones may pass. A group's counts are its members' sums.

Backfill. A job that fits nowhere is skipped and later, smaller jobs may take what is left. No
cores are reserved for the skipped job, so a wide job can wait behind a stream of narrow ones;
priorities are the lever for that.

Speed. A round costs one pass over ``pending`` to group it by priority and user, then work in
proportion to the jobs it looks at, never pending x hosts:
- a cluster with nothing to give returns before looking at ``pending``; a round stops as soon
  as no host can take a job, or (once many jobs were skipped) no pending job is small enough
  for the largest hole left;
- free resources only shrink during a round, so a job at least as large as one that already
  found no host (same exclusions) is skipped without scanning hosts (``_Misses``);
- hosts that can take no more are dropped from the scan; the rest stay ordered by free cores,
  so the first host that fits is the answer.
"""

from __future__ import annotations

import heapq
import math
from bisect import insort
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from hq.server.usage import RUNNING_CORE_S

# load_factor * cores is rarely exact in binary (1.1 * 20 = 22.000000000000004, and some
# products round down): without this slack a host could lose a core to rounding.
_ROUNDING_SLACK = 1e-9
_NO_EXCLUSIONS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class HostSlot:
    """The scheduler's view of one host that may take jobs (the caller already left out
    inactive, drained, retired and unreachable hosts)."""

    name: str
    cores: int
    free_cores: int             # cores not taken by hq jobs
    max_jobs: int | None        # most hq jobs at once; None = no limit beyond cores
    running_jobs: int           # hq jobs on it now
    memory_mb: int | None       # declared memory; None = not declared (requests not checked)
    free_memory_mb: int | None  # declared memory minus what running hq jobs requested
    other_work: float | None    # cores busy with work that is not hq's; None = unknown
    gpus: int = 0               # GPUs it has
    free_gpus: int = 0          # of which no hq job holds


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A job waiting for a host, as far as placement cares."""

    id: int
    owner: str
    priority: int               # higher first
    cores: int                  # at least 1
    memory_mb: int | None       # None or 0 = no memory request
    excluded_hosts: frozenset[str]
    gpus: int = 0               # GPUs it needs


@dataclass(frozen=True, slots=True)
class UserLimits:
    """One user's limits (None: the policy's, or none), and the Unix groups whose limits
    (``group_limits`` of ``place_jobs``) bind the user's jobs too."""

    max_running: int | None = None
    max_cores: int | None = None
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupLimits:
    """What all members of one Unix group may hold at once, together (None: no limit)."""

    max_running: int | None = None
    max_cores: int | None = None


def group_usage(running_per_user: Mapping[str, tuple[int, int]],
                user_limits: Mapping[str, UserLimits]) -> dict[str, tuple[int, int]]:
    """group -> (running jobs, running cores) of its members, for the groups in
    ``user_limits``; a user in two groups counts in both."""
    usage: dict[str, tuple[int, int]] = {}
    for owner, (jobs, cores) in running_per_user.items():
        own = user_limits.get(owner)
        for group in own.groups if own is not None else ():
            had_jobs, had_cores = usage.get(group, (0, 0))
            usage[group] = (had_jobs + jobs, had_cores + cores)
    return usage


def group_limit_reached(groups: Sequence[str], group_limits: Mapping[str, GroupLimits],
                        usage: Mapping[str, Sequence[int]], cores: int) -> str | None:
    """The first limit of ``groups`` a job of ``cores`` would break, for display
    (``group physics max_cores=4 reached``), or None."""
    for group in groups:
        limit = group_limits.get(group)
        if limit is None:
            continue
        jobs_held, cores_held = usage.get(group, (0, 0))
        if limit.max_running is not None and jobs_held >= limit.max_running:
            return f"group {group} max_running={limit.max_running} reached"
        if limit.max_cores is not None and cores_held + cores > limit.max_cores:
            return f"group {group} max_cores={limit.max_cores} reached"
    return None


@dataclass(frozen=True)
class Policy:
    """Scheduler knobs from etc/hq-server.cfg [scheduler]."""

    load_factor: float = 1.1        # the original hQ "110 % rule"; see load_headroom
    max_running_per_user: int = 0   # jobs; 0 = unlimited
    fair_share: bool = True


@dataclass(frozen=True, slots=True)
class Placement:
    job_id: int
    host: str


def load_headroom(host: HostSlot, load_factor: float) -> int:
    """Cores of new jobs the load rule lets ``host`` take now (0 or more)::

        busy     = cores - free_cores             # cores held by hq's own jobs
        other    = round(other_work or 0)         # cores busy with work that is not hq's
        headroom = floor(load_factor * cores) - busy - other

    A job passes when ``job.cores <= headroom``; placing it lowers the headroom by its cores.
    ``other_work`` is measured by the host monitor (the CPU the host used over its report
    interval, less hq's daemons and the cores hq's jobs hold), never taken from a user: hq's
    own load never holds hq back, and noise below half a core is no core. None (the monitor
    has not reported lately) counts as no other work: free cores decide.

    With load_factor 1.1: a host without other work fills completely; a 1-core burner on a
    2-core host leaves one core to hq; other work of 2 cores on a 4-core workstation leaves 2
    (the original hQ's rule); interactive work on every core leaves floor(0.1 * cores).
    """
    busy = host.cores - host.free_cores
    other = other_cores(host.other_work)
    return max(0, math.floor(load_factor * host.cores + _ROUNDING_SLACK) - busy - other)


def other_cores(other_work: float | None) -> int:
    """The whole cores the load rule keeps back for ``other_work`` (half a core rounds up;
    unknown is none)."""
    return math.floor((other_work or 0.0) + 0.5)


class _Cluster:
    """The usable hosts' free resources during one round.

    ``avail[i]`` folds free cores and the load rule into one number: the most cores a job
    placed on host i may ask for; both fall by a job's cores when it is placed. ``order`` holds
    (-free cores, name, index) of the hosts that can still take a job, sorted, so a scan in
    order finds the preferred host first.
    """

    __slots__ = ("avail", "free", "gpus", "max_avail", "memory", "order", "slots")

    def __init__(self, hosts: Sequence[HostSlot], load_factor: float) -> None:
        self.free = [h.free_cores for h in hosts]
        self.avail = [min(h.free_cores, load_headroom(h, load_factor)) for h in hosts]
        # a host without max_jobs is bounded by its cores: each job takes at least one
        self.slots = [h.cores if h.max_jobs is None else h.max_jobs - h.running_jobs
                      for h in hosts]
        self.memory = [None if h.memory_mb is None
                       else (h.memory_mb if h.free_memory_mb is None else h.free_memory_mb)
                       for h in hosts]
        self.gpus = [h.free_gpus for h in hosts]
        self.order: list[tuple[int, str, int]] = []
        for i, host in enumerate(hosts):
            if self.avail[i] > 0 and self.slots[i] > 0:
                self.order.append((-self.free[i], host.name, i))
            else:
                self.avail[i] = 0
        self.order.sort()
        self.max_avail = max(self.avail, default=0)

    def pick(self, job: PendingJob) -> int:
        """Position in ``order`` of the host ``job`` goes to, or -1 if none fits."""
        cores, memory, excluded, gpus = job.cores, job.memory_mb, job.excluded_hosts, job.gpus
        avail, free_memory, free_gpus = self.avail, self.memory, self.gpus
        for pos, (_, name, i) in enumerate(self.order):
            if (avail[i] >= cores and (not memory or free_memory[i] is None
                                       or free_memory[i] >= memory)
                    and name not in excluded and free_gpus[i] >= gpus):
                return pos
        return -1

    def take(self, pos: int, job: PendingJob) -> str:
        """Charge ``job`` to the host at ``pos`` (from ``pick``); return the host's name."""
        _, name, i = self.order.pop(pos)
        cores = job.cores
        was = self.avail[i]
        self.free[i] -= cores
        self.slots[i] -= 1
        if job.memory_mb and self.memory[i] is not None:
            self.memory[i] -= job.memory_mb
        self.gpus[i] -= job.gpus
        if was - cores > 0 and self.slots[i] > 0:
            self.avail[i] = was - cores
            insort(self.order, (-self.free[i], name, i))
        else:
            self.avail[i] = 0  # takes nothing more this round: out of the scan for good
        if was == self.max_avail:
            self.max_avail = max(self.avail)
        return name


class _Misses:
    """Job shapes that found no host this round, per set of excluded hosts.

    Free resources only shrink during a round, so a job with at least the cores and memory of
    one that found no host, and at least its exclusions, cannot fit either. For each exclusion
    set a table maps cores c to the least memory that missed with c or fewer cores; a job is
    checked against its own set's table and the no-exclusions one.
    """

    __slots__ = ("_size", "_tables")

    def __init__(self, max_cores: int) -> None:
        self._size = max_cores + 1
        self._tables: dict[frozenset[str], list[float]] = {}

    def covers(self, job: PendingJob) -> bool:
        """Whether a job like this one already missed. Only call with cores <= max_cores.
        GPU jobs are neither covered nor recorded: they are few, and fit by another rule."""
        if job.gpus:
            return False
        memory = job.memory_mb or 0
        table = self._tables.get(job.excluded_hosts)
        if table is not None and table[job.cores] <= memory:
            return True
        if job.excluded_hosts:
            table = self._tables.get(_NO_EXCLUSIONS)
            return table is not None and table[job.cores] <= memory
        return False

    def add(self, job: PendingJob) -> None:
        if job.gpus:
            return
        table = self._tables.get(job.excluded_hosts)
        if table is None:
            table = self._tables[job.excluded_hosts] = [math.inf] * self._size
        memory = job.memory_mb or 0
        for cores in range(job.cores, self._size):
            if table[cores] <= memory:
                break  # the table never rises with cores: the rest is already as low
            table[cores] = memory


def _queues(pending: Sequence[PendingJob]) -> dict[str, list[PendingJob]]:
    """owner -> that owner's jobs, higher priority first, then in submission order.

    This pass is most of a round's cost when many jobs wait (a defaultdict: the fastest
    grouping measured, about 50 ns a job); only an owner with several priorities is sorted.
    """
    owners: defaultdict[str, list[PendingJob]] = defaultdict(list)
    for job in pending:
        owners[job.owner].append(job)
    for jobs in owners.values():
        if jobs[0].priority != jobs[-1].priority or any(
                j.priority != jobs[0].priority for j in jobs):
            jobs.sort(key=lambda j: -j.priority)   # stable: id order within a priority
    return owners


def place_jobs(pending: Sequence[PendingJob], hosts: Sequence[HostSlot],
               running_per_user: Mapping[str, tuple[int, int]],
               policy: Policy, share_keys: Mapping[str, float] | None = None,
               user_limits: Mapping[str, UserLimits] | None = None,
               group_limits: Mapping[str, GroupLimits] | None = None) -> list[Placement]:
    """One scheduling round: the placements to make now, in the order they were decided.

    ``pending`` comes in submission order (ids ascending); ``running_per_user`` maps owner to
    (running jobs, running cores); ``user_limits`` holds each user's limits, over the
    policy's, and their groups; ``group_limits`` what each group's members may hold
    together. A job starts only within its owner's limits and every one of the owner's
    groups'. Ordering, fit and backfill rules: see the module docstring.
    """
    cluster = _Cluster(hosts, policy.load_factor)
    if not cluster.order:
        return []  # nothing free: answer before looking at a single pending job
    limit = policy.max_running_per_user
    running = {owner: jobs for owner, (jobs, _) in running_per_user.items()}
    held = {owner: cores for owner, (_, cores) in running_per_user.items()}
    limits = user_limits or {}
    groups = group_limits or {}
    # group -> [running jobs, running cores] of its members, kept up to date in the round
    group_held = {group: list(held_now)
                  for group, held_now in group_usage(running_per_user, limits).items()}
    # with fair share the key is each owner's share key (hq.server.usage: decayed usage and
    # the cores held now, RUNNING_CORE_S each), or their running cores when none is given
    per_core = RUNNING_CORE_S if share_keys is not None else 1
    share = ({} if not policy.fair_share else dict(share_keys) if share_keys is not None
             else {owner: cores for owner, (_, cores) in running_per_user.items()})
    misses = _Misses(cluster.max_avail)
    # Skipping a job in Python costs about eight times what a C-level min() pass spends on it,
    # so once an eighth of pending was skipped the round learns the smallest job's cores and
    # stops as soon as no host has that many left (0 until then: never stops the round).
    skipped, enough_skipped, smallest = 0, len(pending) // 8, 0
    placements: list[Placement] = []
    # one entry per owner: (key, id of the owner's next job, its position, owner, jobs); ids
    # are unique, so tuples never compare past the id
    heap = [(share.get(owner, 0), jobs[0].id, 0, owner, jobs)
            for owner, jobs in _queues(pending).items()]
    heapq.heapify(heap)
    while heap:
        key, _, pos, owner, jobs = heap[0]
        own = limits.get(owner)
        most = own.max_running if own is not None and own.max_running is not None else limit
        if most and running.get(owner, 0) >= most:
            heapq.heappop(heap)   # none of the owner's jobs this round
            continue
        cores_left = None if own is None or own.max_cores is None \
            else own.max_cores - held.get(owner, 0)
        if own is not None and own.groups:
            # a group's counts only rise during a round: a full group stays full
            capped = [(groups[g], group_held.setdefault(g, [0, 0])) for g in own.groups
                      if g in groups]
            if any(g.max_running is not None and n >= g.max_running for g, (n, _) in capped):
                heapq.heappop(heap)
                continue
            for g, (_, cores_now) in capped:
                if g.max_cores is not None:
                    left = g.max_cores - cores_now
                    cores_left = left if cores_left is None else min(cores_left, left)
        if cores_left is not None and cores_left < 1:
            heapq.heappop(heap)   # no core left to the owner: none of their jobs, at once
            continue
        # skip, without a heap operation each, the owner's jobs that cannot fit, as long as
        # the next one has the same priority (ids ascend there, so the owner's turn only
        # comes later); the last of a priority goes through the heap like any other job,
        # since the next priority's first job may be older than other owners' next jobs
        start, end, level = pos, len(jobs), jobs[pos].priority
        while pos + 1 < end and jobs[pos + 1].priority == level and (
                jobs[pos].cores > cluster.max_avail or misses.covers(jobs[pos])):
            pos += 1
        if pos != start:
            skipped += pos - start
            if not smallest and skipped > enough_skipped:
                smallest = min([j.cores for j in pending])
            if cluster.max_avail < smallest:
                return placements
            heapq.heapreplace(heap, (key, jobs[pos].id, pos, owner, jobs))
            continue
        job = jobs[pos]
        if cores_left is not None and job.cores > cores_left:
            at = -2   # over the owner's cores: a shape others' jobs may still fit
        else:
            at = -1 if job.cores > cluster.max_avail or misses.covers(job) \
                else cluster.pick(job)
        if at == -1:
            misses.add(job)
        elif at >= 0:
            placements.append(Placement(job.id, cluster.take(at, job)))
            running[owner] = running.get(owner, 0) + 1
            held[owner] = held.get(owner, 0) + job.cores
            for g in own.groups if own is not None else ():
                if g in group_held:
                    group_held[g][0] += 1
                    group_held[g][1] += job.cores
            if policy.fair_share:
                key = share[owner] = key + job.cores * per_core
            if not cluster.order or cluster.max_avail < smallest:
                return placements
        if pos + 1 == end:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (key, jobs[pos + 1].id, pos + 1, owner, jobs))
    return placements


def pending_reason(job: PendingJob, hosts: Sequence[HostSlot], all_hosts: Collection[str],
                   running_per_user: Mapping[str, tuple[int, int]], policy: Policy,
                   limits: UserLimits | None = None,
                   group_limits: Mapping[str, GroupLimits] | None = None,
                   group_held: Mapping[str, Sequence[int]] | None = None) -> str:
    """A short reason, for display, why ``job`` is still pending.

    ``hosts`` are the hosts that may take jobs now (as for ``place_jobs``), ``all_hosts`` the
    names of every host in the cluster, ``group_held`` what each group holds now
    (``group_usage``). Lasting reasons are reported before passing ones.
    """
    cores, memory = job.cores, job.memory_mb
    if all_hosts and all(name in job.excluded_hosts for name in all_hosts):
        return "excluded from every host"
    candidates = [h for h in hosts if h.name not in job.excluded_hosts]
    if not candidates:
        return "waiting for a free host"  # every host it may use is drained, down or inactive
    candidates = [h for h in candidates if h.cores >= cores]
    if not candidates:
        return f"no host has {cores} cores"
    if memory:
        candidates = [h for h in candidates if h.memory_mb is None or h.memory_mb >= memory]
        if not candidates:
            return "not enough memory on any host"
    if job.gpus:
        candidates = [h for h in candidates if h.gpus >= job.gpus]
        if not candidates:
            return f"no host it may use has {job.gpus} GPU{'' if job.gpus == 1 else 's'}"
    limit = policy.max_running_per_user
    if limits is not None and limits.max_running is not None:
        limit = limits.max_running
    jobs_held, cores_held = running_per_user.get(job.owner, (0, 0))
    if limit and jobs_held >= limit:
        return f"user limit of {limit} running jobs reached"
    if limits is not None and limits.max_cores is not None \
            and cores_held + cores > limits.max_cores:
        return f"user limit of {limits.max_cores} cores reached"
    if limits is not None and limits.groups and group_limits:
        reached = group_limit_reached(limits.groups, group_limits, group_held or {}, cores)
        if reached is not None:
            return reached
    candidates = [h for h in candidates if h.free_cores >= cores]
    if not candidates:
        return f"waiting for {cores} free core{'' if cores == 1 else 's'}"
    candidates = [h for h in candidates if h.max_jobs is None or h.running_jobs < h.max_jobs]
    if not candidates:
        return "waiting for a free host"
    if memory:
        candidates = [h for h in candidates if h.memory_mb is None or h.free_memory_mb is None
                      or h.free_memory_mb >= memory]
        if not candidates:
            return f"waiting for {memory} MB of free memory"
    if job.gpus:
        candidates = [h for h in candidates if h.free_gpus >= job.gpus]
        if not candidates:
            return f"waiting for {job.gpus} free GPU{'' if job.gpus == 1 else 's'}"
    if all(load_headroom(h, policy.load_factor) < cores for h in candidates):
        return "hosts busy with other work (load)"
    # it fits now: jobs of higher priority or of users with a smaller share went first
    return "waiting for its turn"

"""hq.server.scheduler: placement rules, the load rule's edge cases, early stops, pending reasons.

Besides the examples, a seeded random comparison checks ``place_jobs`` against a plain
reference that scans every host for every job (no shortcuts), and checks that no host is
over-committed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from fractions import Fraction

import pytest

from hq.server.scheduler import (
    HostSlot,
    PendingJob,
    Placement,
    Policy,
    load_headroom,
    pending_reason,
    place_jobs,
)

DEFAULT = Policy()
FIFO = Policy(fair_share=False)


def host(name: str = "node01", cores: int = 4, free: int | None = None, *,
         max_jobs: int | None = None, running: int = 0, memory: int | None = None,
         free_memory: int | None = None, other: float | None = None) -> HostSlot:
    free = cores if free is None else free
    if memory is not None and free_memory is None:
        free_memory = memory
    return HostSlot(name=name, cores=cores, free_cores=free, max_jobs=max_jobs,
                    running_jobs=running, memory_mb=memory, free_memory_mb=free_memory,
                    other_work=other)


def job(id: int, owner: str = "alice", *, priority: int = 0, cores: int = 1,
        memory: int | None = None, excluded: Sequence[str] = ()) -> PendingJob:
    return PendingJob(id=id, owner=owner, priority=priority, cores=cores, memory_mb=memory,
                      excluded_hosts=frozenset(excluded))


def placed(pending, hosts, running=None, policy=DEFAULT) -> list[tuple[int, str]]:
    return [(p.job_id, p.host) for p in place_jobs(pending, hosts, running or {}, policy)]


def ids(pending, hosts, running=None, policy=DEFAULT) -> list[int]:
    return [job_id for job_id, _ in placed(pending, hosts, running, policy)]


# --- order ---------------------------------------------------------------------------------

def test_higher_priority_goes_first_even_when_submitted_later():
    pending = [job(1), job(2, priority=5), job(3, priority=1)]
    assert ids(pending, [host(cores=2)]) == [2, 3]


def test_equal_priority_is_fifo_by_id():
    assert ids([job(1), job(2), job(3)], [host(cores=2)]) == [1, 2]


def test_fair_share_splits_four_cores_between_two_users():
    pending = [job(i, "alice") for i in range(1, 5)] + [job(i, "bob") for i in range(5, 9)]
    # alice's first job is the oldest of the tie at zero cores; then the users alternate
    assert ids(pending, [host(cores=4)]) == [1, 5, 2, 6]


def test_fair_share_counts_cores_already_running():
    pending = [job(1, "alice"), job(2, "alice"), job(3, "bob"), job(4, "bob")]
    running = {"alice": (1, 3), "bob": (1, 1)}
    # bob (1 core) is below alice (3 cores) until he has caught up
    assert ids(pending, [host(cores=3)], running) == [3, 4, 1]


def test_fair_share_weighs_cores_not_jobs():
    pending = [job(1, "alice", cores=3), job(2, "alice"), job(3, "bob"), job(4, "bob"),
               job(5, "bob")]
    assert ids(pending, [host(cores=6)]) == [1, 3, 4, 5]


def test_fair_share_off_is_plain_fifo():
    pending = [job(i, "alice") for i in range(1, 5)] + [job(i, "bob") for i in range(5, 9)]
    assert ids(pending, [host(cores=4)], policy=FIFO) == [1, 2, 3, 4]


def test_priority_orders_only_the_users_own_jobs():
    pending = [job(1, "alice"), job(2, "alice"), job(3, "bob"), job(4, "alice", priority=1000)]
    # bob has less running: his job first; alice's -p 1000 job goes before her others only
    assert ids(pending, [host(cores=3)], {"alice": (5, 5)}) == [3, 4, 1]
    # FIFO between users goes by their next jobs: bob's 3 is older than alice's 4
    assert ids(pending, [host(cores=3)], policy=FIFO) == [3, 4, 1]


# --- choice of host ------------------------------------------------------------------------

def test_jobs_spread_over_hosts_most_free_cores_first():
    hosts = [host("a", cores=8, free=4), host("b", cores=8, free=6)]
    assert placed([job(1), job(2), job(3), job(4)], hosts) == [
        (1, "b"), (2, "b"), (3, "a"), (4, "b")]


def test_tie_on_free_cores_goes_to_first_name():
    hosts = [host("node02"), host("node01")]
    assert placed([job(1), job(2)], hosts) == [(1, "node01"), (2, "node02")]


def test_max_jobs_caps_a_host():
    hosts = [host("a", cores=8, max_jobs=2, running=1), host("b", cores=2)]
    assert placed([job(1), job(2), job(3), job(4)], hosts) == [(1, "a"), (2, "b"), (3, "b")]


def test_memory_is_checked_when_both_sides_declare_it():
    hosts = [host("a", memory=4000, free_memory=1000), host("b", cores=2, free=1)]
    pending = [job(1, memory=1500), job(2, memory=1500), job(3, memory=800), job(4)]
    # job 1 fits only b (memory undeclared); 3 needs a; 4 asks nothing
    assert placed(pending, hosts) == [(1, "b"), (3, "a"), (4, "a")]


def test_memory_is_used_up_by_placements():
    hosts = [host("a", cores=8, memory=1000)]
    assert ids([job(1, memory=600), job(2, memory=600), job(3, memory=400)], hosts) == [1, 3]


def test_excluded_hosts_are_never_used():
    hosts = [host("a", cores=8), host("b", cores=1)]
    pending = [job(1, excluded=["a"]), job(2, excluded=["a"]), job(3, excluded=["a", "b"])]
    assert placed(pending, hosts) == [(1, "b")]


def test_small_job_backfills_past_one_that_fits_nowhere():
    hosts = [host(cores=4, free=3)]
    pending = [job(1, cores=4), job(2, cores=8), job(3, cores=2), job(4, cores=2)]
    assert ids(pending, hosts) == [3]


# --- the load rule -------------------------------------------------------------------------

@pytest.mark.parametrize(("cores", "free", "other", "expected"), [
    (16, 16, None, 16),   # the monitor has not reported: free cores decide
    (16, 16, 0.0, 16),    # idle host fills completely
    (16, 8, 0.0, 8),      # hq's own 8 jobs are not other work
    (16, 0, 0.0, 0),      # full
    (16, 16, 16.0, 1),    # interactive work on every core: floor(0.1 * 16)
    (10, 10, 10.0, 1),
    (9, 9, 9.0, 0),       # floor(0.9)
    (16, 8, 4.0, 5),      # 8 hq cores + 4 other: 17 - 12
    (16, 16, 17.6, 0),    # over the limit
    (16, 16, 20.0, 0),
    (16, 16, 15.6, 1),    # 15.6 cores of other work are 16
    (2, 2, 1.0, 1),       # a 1-core burner on 2 cores leaves one core to hq
    (2, 2, 0.3, 2),       # noise is no core
    (4, 4, 2.0, 2),       # a workstation in use: other work of 2 cores leaves 2 (hQ's rule)
])
def test_load_rule(cores, free, other, expected):
    slot = host(cores=cores, free=free, other=other)
    assert min(free, load_headroom(slot, 1.1)) == expected
    assert len(ids([job(i) for i in range(40)], [slot])) == expected


@pytest.mark.parametrize("cores", range(1, 257))
def test_interactive_load_on_every_core_leaves_a_tenth(cores):
    assert load_headroom(host(cores=cores, other=float(cores)), 1.1) == cores // 10


@pytest.mark.parametrize("cores", range(1, 257))
def test_no_interactive_load_fills_every_core(cores):
    for busy in (0, cores // 2, cores - 1):
        slot = host(cores=cores, free=cores - busy, other=0.0)
        assert load_headroom(slot, 1.1) >= cores - busy


@pytest.mark.parametrize("load_factor", [1.05, 1.1, 1.15, 1.2, 1.25, 1.5, 2.0])
def test_load_factor_rounding_never_costs_a_core(load_factor):
    # 1.15 * 100 - 100 is 14.99999... in binary floating point; the exact answer is 15
    for cores in range(1, 257):
        exact = math.floor((Fraction(str(load_factor)) - 1) * cores)
        assert load_headroom(host(cores=cores, other=float(cores)), load_factor) == exact


def test_load_rises_with_each_placement():
    slot = host(cores=16, other=14.0)  # headroom 17 - 14 = 3
    assert ids([job(1, cores=2), job(2, cores=2), job(3), job(4)], [slot]) == [1, 3]


def test_load_factor_one_with_interactive_load_takes_nothing():
    slot = host(cores=16, other=16.0)
    assert ids([job(1)], [slot], policy=Policy(load_factor=1.0)) == []


def test_load_sends_jobs_to_the_quiet_host():
    hosts = [host("busy", cores=16, other=16.0), host("quiet", cores=4, free=2)]
    assert placed([job(1), job(2), job(3, cores=2)], hosts) == [(1, "busy"), (2, "quiet")]


# --- per-user limit ------------------------------------------------------------------------

def test_user_limit_counts_running_and_placed_jobs():
    pending = [job(1, "alice"), job(2, "alice"), job(3, "bob"), job(4, "bob"), job(5, "bob")]
    policy = Policy(max_running_per_user=2)
    # bob (0 cores) first; then the tie at one core goes to alice's older job, her last
    assert ids(pending, [host(cores=8)], {"alice": (1, 1)}, policy) == [3, 1, 4]


def test_user_limit_applies_across_priorities():
    pending = [job(1, priority=2), job(2, priority=1), job(3), job(4, "bob")]
    policy = Policy(max_running_per_user=2, fair_share=False)
    assert ids(pending, [host(cores=8)], policy=policy) == [1, 2, 4]


# --- early stops and shortcuts -------------------------------------------------------------

class CountingJobs(Sequence):
    """100,000 pending jobs that count every time they are looked at."""

    def __init__(self, n: int = 100_000) -> None:
        self.n = n
        self.reads = 0

    def __len__(self) -> int:
        self.reads += 1
        return self.n

    def __getitem__(self, index):
        if isinstance(index, slice):
            raise TypeError("no slices")
        if not 0 <= index < self.n:
            raise IndexError(index)
        self.reads += 1
        return job(index + 1, f"user{index % 10}", cores=1 + index % 4)


@pytest.mark.parametrize("hosts", [
    [host(f"n{i}", cores=16, free=0) for i in range(40)],
    [host(f"n{i}", cores=16, max_jobs=4, running=4) for i in range(40)],
    [host(f"n{i}", cores=16, other=40.0) for i in range(40)],
    [],
], ids=["no free core", "every host at max_jobs", "every host loaded", "no hosts"])
def test_full_cluster_returns_without_reading_pending(hosts):
    pending = CountingJobs()
    assert place_jobs(pending, hosts, {}, Policy()) == []
    assert pending.reads == 0


def test_round_stops_when_cluster_fills():
    pending = [job(i, f"user{i % 10}", cores=1 + i % 4) for i in range(100_000)]
    hosts = [host(f"n{i:02}", cores=16) for i in range(40)]
    result = place_jobs(pending, hosts, {}, Policy())
    assert sum(pending[p.job_id].cores for p in result) == 640


def test_jobs_like_one_that_missed_are_skipped_but_smaller_ones_still_placed():
    hosts = [host("a", cores=8, memory=1000), host("b", cores=2, memory=4000)]
    pending = ([job(i, cores=4, memory=2000) for i in range(1, 1000)]
               + [job(1000, cores=2, memory=2000), job(1001, cores=8, memory=500)])
    assert placed(pending, hosts) == [(1000, "b"), (1001, "a")]


# --- random inputs against a reference ----------------------------------------------------

def reference(pending, hosts, running_per_user, policy):
    """The rules written as plainly as possible: every job scans every host."""
    free = {h.name: h.free_cores for h in hosts}
    slots = {h.name: math.inf if h.max_jobs is None else h.max_jobs - h.running_jobs
             for h in hosts}
    memory = {h.name: None if h.memory_mb is None else h.free_memory_mb for h in hosts}
    headroom = {h.name: load_headroom(h, policy.load_factor) for h in hosts}
    jobs_of = {o: n for o, (n, _) in running_per_user.items()}
    cores_of = {o: c for o, (_, c) in running_per_user.items()}
    limit = policy.max_running_per_user
    left = list(pending)
    result = []
    while True:
        left = [j for j in left if not limit or jobs_of.get(j.owner, 0) < limit]
        if not left:
            return result
        # each user's next job: their highest priority, then their oldest
        heads: dict[str, PendingJob] = {}
        for j in left:
            best = heads.get(j.owner)
            if best is None or (-j.priority, j.id) < (-best.priority, best.id):
                heads[j.owner] = j
        nxt = min(heads.values(),
                  key=lambda j: ((cores_of.get(j.owner, 0) if policy.fair_share else 0), j.id))
        left.remove(nxt)
        fits = [h.name for h in hosts
                if h.name not in nxt.excluded_hosts and free[h.name] >= nxt.cores
                and slots[h.name] > 0 and headroom[h.name] >= nxt.cores
                and (not nxt.memory_mb or memory[h.name] is None
                     or memory[h.name] >= nxt.memory_mb)]
        if not fits:
            continue
        name = min(fits, key=lambda n: (-free[n], n))
        free[name] -= nxt.cores
        headroom[name] -= nxt.cores
        slots[name] -= 1
        if nxt.memory_mb and memory[name] is not None:
            memory[name] -= nxt.memory_mb
        jobs_of[nxt.owner] = jobs_of.get(nxt.owner, 0) + 1
        cores_of[nxt.owner] = cores_of.get(nxt.owner, 0) + nxt.cores
        result.append(Placement(nxt.id, name))


def random_case(rng: random.Random):
    names = [f"n{i}" for i in range(rng.randint(0, 6))]
    hosts = []
    for name in names:
        cores = rng.choice([1, 2, 4, 8, 16])
        free = rng.randint(0, cores)
        max_jobs = rng.choice([None, None, rng.randint(0, 6)])
        memory = rng.choice([None, 1000, 8000])
        hosts.append(host(
            name, cores, free, max_jobs=max_jobs,
            running=0 if max_jobs is None else rng.randint(0, max_jobs),
            memory=memory, free_memory=None if memory is None else rng.randint(0, memory),
            other=rng.choice([None, rng.uniform(0, 1.5 * cores), 0.0])))
    owners = ["alice", "bob", "carol"]
    pending = [job(i, rng.choice(owners), priority=rng.choice([0, 0, 1, 2]),
                   cores=rng.choice([1, 1, 2, 3, 4, 8, 17]),
                   memory=rng.choice([None, 0, 200, 900, 3000]),
                   excluded=rng.sample(names, min(len(names), rng.choice([0, 0, 1, 9]))))
               for i in range(rng.randint(0, 60))]
    running = {o: (n, n * rng.randint(1, 3)) for o in owners if (n := rng.randint(0, 3))}
    policy = Policy(load_factor=rng.choice([1.0, 1.1, 1.5]),
                    max_running_per_user=rng.choice([0, 0, 2, 4]),
                    fair_share=rng.random() < 0.6)
    return pending, hosts, running, policy


@pytest.mark.parametrize("seed", range(400))
def test_random_rounds_match_reference_and_never_overcommit(seed):
    pending, hosts, running, policy = random_case(random.Random(seed))
    result = place_jobs(pending, hosts, running, policy)
    assert result == reference(pending, hosts, running, policy)

    by_id = {j.id: j for j in pending}
    assert len({p.job_id for p in result}) == len(result)
    for h in hosts:
        mine = [by_id[p.job_id] for p in result if p.host == h.name]
        assert all(h.name not in j.excluded_hosts for j in mine)
        assert sum(j.cores for j in mine) <= min(h.free_cores,
                                                 load_headroom(h, policy.load_factor))
        if h.max_jobs is not None:
            assert h.running_jobs + len(mine) <= h.max_jobs
        if h.memory_mb is not None:
            assert sum(j.memory_mb or 0 for j in mine) <= h.free_memory_mb
    if policy.max_running_per_user:
        for owner in {j.owner for j in pending}:
            mine = sum(by_id[p.job_id].owner == owner for p in result)
            before = running.get(owner, (0, 0))[0]
            assert mine == 0 or before + mine <= policy.max_running_per_user


# --- pending_reason ------------------------------------------------------------------------

NAMES = ["a", "b", "c"]


@pytest.mark.parametrize(("pending_job", "hosts", "running", "policy", "reason"), [
    (job(1, excluded=NAMES), [host("a")], {}, Policy(), "excluded from every host"),
    (job(1, excluded=["a"]), [host("a")], {}, Policy(), "waiting for a free host"),
    (job(1, cores=32), [host("a", cores=16), host("b", cores=8)], {}, Policy(),
     "no host has 32 cores"),
    (job(1, cores=2, memory=9000), [host("a", memory=8000), host("b", cores=1, memory=16000)],
     {},
     Policy(), "not enough memory on any host"),
    (job(1), [host("a")], {"alice": (3, 3)}, Policy(max_running_per_user=3),
     "user limit of 3 running jobs reached"),
    (job(1, cores=2), [host("a", free=1), host("b", free=0)], {}, Policy(),
     "waiting for 2 free cores"),
    (job(1), [host("a", free=0)], {}, Policy(), "waiting for 1 free core"),
    (job(1), [host("a", max_jobs=1, running=1)], {}, Policy(), "waiting for a free host"),
    (job(1, memory=500), [host("a", memory=1000, free_memory=100)], {}, Policy(),
     "waiting for 500 MB of free memory"),
    (job(1), [host("a", cores=16, other=17.0)], {}, Policy(),
     "hosts busy with other work (load)"),
    (job(1), [host("a")], {}, Policy(), "waiting for its turn"),
])
def test_pending_reason(pending_job, hosts, running, policy, reason):
    assert pending_reason(pending_job, hosts, NAMES, running, policy) == reason


def test_pending_reason_agrees_with_place_jobs_for_load():
    slot = host(cores=16, free=8, other=0.0)  # hq's own load only: never other work
    pending = job(1, cores=8)
    assert ids([pending], [slot]) == [1]
    assert pending_reason(pending, [slot], ["node01"], {}, Policy()) == "waiting for its turn"


# --- limits per user (etc/users) -------------------------------------------------------------

def test_per_user_limits_override_the_policy():
    from hq.server.scheduler import UserLimits

    pending = [job(1, "alice"), job(2, "alice"), job(3, "alice", cores=2), job(4, "bob"),
               job(5, "bob"), job(6, "bob")]
    limits = {"alice": UserLimits(max_cores=2), "bob": UserLimits(max_running=1)}
    placed_ids = [p.job_id for p in place_jobs(pending, [host(cores=8)], {}, Policy(), None,
                                               limits)]
    # alice: two 1-core jobs fill her 2 cores, her 2-core one waits; bob: one job
    assert sorted(placed_ids) == [1, 2, 4]
    reason = pending_reason(job(3, "alice", cores=2), [host(cores=8)], NAMES,
                            {"alice": (2, 2)}, Policy(), UserLimits(max_cores=2))
    assert reason == "user limit of 2 cores reached"


# --- limits per Unix group ([limits] group.NAME, @NAME in etc/users) --------------------------

def _grouped(**users: tuple[str, ...]):
    from hq.server.scheduler import UserLimits

    return {name: UserLimits(groups=groups) for name, groups in users.items()}


def test_a_group_core_limit_holds_across_two_members():
    from hq.server.scheduler import GroupLimits

    pending = [job(1, "alice", cores=2), job(2, "bob", cores=2), job(3, "alice", cores=2),
               job(4, "bob", cores=2), job(5, "carol", cores=2)]
    limits = _grouped(alice=("physics",), bob=("physics",))
    placed_ids = [p.job_id for p in place_jobs(pending, [host(cores=16)], {}, Policy(), None,
                                               limits, {"physics": GroupLimits(max_cores=4)})]
    # alice and bob share 4 cores: two of their 2-core jobs; carol is in no group
    assert sorted(placed_ids) == [1, 2, 5]


def test_a_group_job_limit_counts_what_members_already_run():
    from hq.server.scheduler import GroupLimits

    pending = [job(1, "alice"), job(2, "bob"), job(3, "bob")]
    limits = _grouped(alice=("physics",), bob=("physics",))
    group = {"physics": GroupLimits(max_running=3)}
    placed_ids = [p.job_id for p in place_jobs(pending, [host(cores=16)], {"alice": (2, 2)},
                                               FIFO, None, limits, group)]
    assert placed_ids == [1]   # alice's two running jobs and this one fill the group's 3
    assert place_jobs(pending, [host(cores=16)], {"alice": (2, 2), "bob": (1, 1)}, FIFO,
                      None, limits, group) == []


def test_a_user_limit_tighter_than_the_group_limit_binds_first():
    from hq.server.scheduler import GroupLimits, UserLimits

    pending = [job(i, "alice") for i in range(1, 6)] + [job(i, "bob") for i in range(6, 9)]
    limits = {"alice": UserLimits(max_running=1, groups=("physics",)),
              "bob": UserLimits(groups=("physics",))}
    placed_ids = [p.job_id for p in place_jobs(pending, [host(cores=16)], {}, FIFO, None,
                                               limits, {"physics": GroupLimits(max_cores=10)})]
    assert sorted(placed_ids) == [1, 6, 7, 8]   # alice's own 1 binds; the group's 10 does not


def test_every_group_of_a_user_binds_and_a_smaller_job_may_still_fit():
    from hq.server.scheduler import GroupLimits

    pending = [job(1, "alice", cores=3), job(2, "alice", cores=1)]
    limits = _grouped(alice=("physics", "lab"))
    group = {"physics": GroupLimits(max_cores=8), "lab": GroupLimits(max_cores=2)}
    placed_ids = [p.job_id for p in place_jobs(pending, [host(cores=16)], {}, FIFO, None,
                                               limits, group)]
    assert placed_ids == [2]   # lab's 2 cores: the 3-core job waits, the 1-core one passes


def test_the_pending_reason_names_the_group_limit():
    from hq.server.scheduler import GroupLimits, UserLimits, group_usage

    limits = _grouped(alice=("physics",), bob=("physics",))
    running = {"alice": (1, 2), "bob": (1, 2)}
    held = group_usage(running, limits)
    assert held == {"physics": (2, 4)}
    reason = pending_reason(job(3, "alice", cores=2), [host(cores=16, free=12)], NAMES,
                            running, Policy(), limits["alice"],
                            {"physics": GroupLimits(max_cores=4)}, held)
    assert reason == "group physics max_cores=4 reached"
    reason = pending_reason(job(3, "alice"), [host(cores=16, free=12)], NAMES, running,
                            Policy(), limits["alice"], {"physics": GroupLimits(max_running=2)},
                            held)
    assert reason == "group physics max_running=2 reached"
    # the user's own limit is named first when both are reached
    reason = pending_reason(job(3, "alice"), [host(cores=16, free=12)], NAMES, running,
                            Policy(), UserLimits(max_running=1, groups=("physics",)),
                            {"physics": GroupLimits(max_running=2)}, held)
    assert reason == "user limit of 1 running jobs reached"

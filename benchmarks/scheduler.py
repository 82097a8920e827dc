"""Benchmark of hq.server.scheduler.place_jobs (run by hand, never by CI).

    hqVE/bin/python benchmarks/scheduler.py [--jobs 100000] [--hosts 40] [--users 10]

Scenarios, each the median of --runs runs, with ratios to a baseline measured in the same
process (``sorted()`` of the same jobs as plain tuples), so figures compare across machines:
- drain: rounds until every job is placed; between rounds about half of the running jobs
  finish, as a busy cluster would see. Only place_jobs calls are timed.
- full: one round on a cluster without a free core (must return at once).
- nearly full: one round with one free core per host and every pending job still waiting.
DESIGN §7 wants scheduler + database bookkeeping below 0.1 ms per task, so the scheduler
alone should stay far below that: the script flags more than 20 µs per placement.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hq.server.scheduler import HostSlot, PendingJob, Policy, place_jobs

TARGET_US_PER_PLACEMENT = 20.0


def make_jobs(n: int, users: int, rng: random.Random) -> list[PendingJob]:
    owners = [f"user{i:02}" for i in range(users)]
    none: frozenset[str] = frozenset()
    return [PendingJob(id=i, owner=rng.choice(owners),
                       priority=rng.choice((0, 0, 0, 0, 0, 0, 1, 1, 5)),
                       cores=rng.randint(1, 4),
                       memory_mb=rng.choice((None, None, None, 512, 2048)),
                       excluded_hosts=none)
            for i in range(1, n + 1)]


def make_hosts(n: int, rng: random.Random) -> list[HostSlot]:
    hosts = []
    for i in range(n):
        cores = rng.choice((16, 24, 32, 48, 64))
        # every fifth host has someone working on it interactively
        load1 = float(rng.randint(1, cores // 2)) if i % 5 == 0 else 0.0
        hosts.append(HostSlot(name=f"node{i:03}", cores=cores, free_cores=cores, max_jobs=None,
                              running_jobs=0, memory_mb=cores * 4096,
                              free_memory_mb=cores * 4096, load1=load1))
    return hosts


def timed(fn, *args):
    gc.collect()  # a collection left over from setting up should not land in the timing
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def drain(jobs: list[PendingJob], hosts: list[HostSlot], seed: int) -> tuple[float, int, int]:
    """Seconds spent in place_jobs, rounds and placements until nothing is pending."""
    rng = random.Random(seed)
    policy = Policy()
    by_id = {j.id: j for j in jobs}
    interactive = {h.name: h.load1 or 0.0 for h in hosts}
    state = {h.name: h for h in hosts}
    running: dict[str, list[PendingJob]] = {h.name: [] for h in hosts}
    pending = jobs
    spent, rounds, count = 0.0, 0, 0
    while pending:
        per_user: Counter[str] = Counter()
        cores_per_user: Counter[str] = Counter()
        for on_host in running.values():
            for j in on_host:
                per_user[j.owner] += 1
                cores_per_user[j.owner] += j.cores
        users = {u: (per_user[u], cores_per_user[u]) for u in per_user}
        seconds, placements = timed(place_jobs, pending, list(state.values()), users, policy)
        spent += seconds
        rounds += 1
        count += len(placements)
        for p in placements:
            running[p.host].append(by_id[p.job_id])
        done = {p.job_id for p in placements}
        pending = [j for j in pending if j.id not in done]
        # about half of what runs finishes before the next round
        for name, on_host in running.items():
            on_host[:] = [j for j in on_host if rng.random() < 0.5]
            busy = sum(j.cores for j in on_host)
            memory = sum(j.memory_mb or 0 for j in on_host)
            state[name] = dataclasses.replace(
                state[name], free_cores=state[name].cores - busy, running_jobs=len(on_host),
                free_memory_mb=state[name].memory_mb - memory,
                load1=interactive[name] + busy)
    return spent, rounds, count


def fill(hosts: list[HostSlot], leave_free: int) -> list[HostSlot]:
    return [dataclasses.replace(h, free_cores=leave_free, running_jobs=h.cores - leave_free,
                                load1=float(h.cores - leave_free)) for h in hosts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--hosts", type=int, default=40)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    jobs = make_jobs(args.jobs, args.users, rng)
    hosts = make_hosts(args.hosts, rng)
    tuples = [(-j.priority, j.id, j.owner, j.cores) for j in jobs]
    rng.shuffle(tuples)  # sorted() of already sorted input would be a trivial baseline
    users = {f"user{i:02}": (100, 250) for i in range(args.users)}

    def median(fn) -> float:
        return statistics.median(fn() for _ in range(args.runs))

    baseline = median(lambda: timed(sorted, tuples)[0])
    drains = [drain(jobs, hosts, args.seed + run) for run in range(args.runs)]
    drain_s = statistics.median(d[0] for d in drains)
    rounds = statistics.median(d[1] for d in drains)
    placed = statistics.median(d[2] for d in drains)
    first = median(lambda: timed(place_jobs, jobs, hosts, {}, Policy())[0])
    full_hosts, nearly_hosts = fill(hosts, 0), fill(hosts, 1)
    # every pending job needs 2 cores or more, so nothing fits the single free cores
    wide = [dataclasses.replace(j, cores=max(2, j.cores)) for j in jobs]
    full = median(lambda: timed(place_jobs, jobs, full_hosts, users, Policy())[0])
    nearly = median(lambda: timed(place_jobs, wide, nearly_hosts, users, Policy())[0])

    cores = sum(h.cores for h in hosts)
    us_per_job = drain_s / placed * 1e6
    per_tuple_us = baseline / len(tuples) * 1e6
    verdict = "ok" if us_per_job < TARGET_US_PER_PLACEMENT else "MISSED"
    print(f"{args.jobs:,} jobs ({args.users} users, priorities 0/1/5, 1-4 cores) on "
          f"{args.hosts} hosts ({cores:,} cores); median of {args.runs} runs")
    rows = [
        (f"baseline: sorted() of {len(tuples):,} tuples", baseline * 1e3, "ms",
         f"({per_tuple_us:.2f} µs per tuple)"),
        ("first round, empty cluster", first * 1e3, "ms", f"{first / baseline:.3f}x baseline"),
        (f"drain: {rounds:.0f} rounds until {placed:,.0f} placed", drain_s * 1e3, "ms",
         f"{drain_s / baseline:.2f}x baseline"),
        ("  per placement", us_per_job, "µs",
         f"{us_per_job / per_tuple_us:.1f}x baseline per tuple; "
         f"target < {TARGET_US_PER_PLACEMENT:.0f} µs: {verdict}"),
        (f"full cluster, {args.jobs:,} pending", full * 1e6, "µs",
         f"{full / baseline:.5f}x baseline"),
        ("one free core per host, no job fits", nearly * 1e3, "ms",
         f"{nearly / baseline:.3f}x baseline"),
    ]
    for label, value, unit, ratio in rows:
        print(f"{label:42} {value:9.2f} {unit}   {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

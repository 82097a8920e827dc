"""Benchmark of hq.server.scheduler.place_jobs (run by hand, never by CI).

    hqVE/bin/python benchmarks/scheduler.py [--hosts 1000] [--cores 64] [--jobs 100000] [--json]

The target (issue 12): on a simulated 1,000 hosts x 64 cores with 100,000 pending jobs, with
fair share (decayed usage keys), per-user limits and constraints on, place at least 6,400
jobs a second: what that cluster needs to stay busy with 10 s jobs (64,000 cores / 10 s).

Scenarios (medians of --runs; only place_jobs calls are timed, never the bookkeeping a round
needs around them):
- fill: the first round on the idle cluster (every core free);
- steady: rounds on the busy cluster, each after the jobs of about one second of a 10 s job
  mix ended (a tenth of what runs, spread over the hosts), until --rounds rounds ran; the
  figure is placements per second of scheduler time;
- full: a round with no free core anywhere (must answer before reading pending);
- growth: one steady round at other sizes (hosts, pending), to show how the cost grows.
A baseline measured in the same process (``sorted()`` of as many plain tuples as there are
pending jobs) makes figures comparable across machines.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hq.server.scheduler import HostSlot, PendingJob, Policy, UserLimits, place_jobs

TARGET_JOBS_PER_S = 6400.0
_NONE: frozenset[str] = frozenset()


@dataclasses.dataclass
class Cluster:
    """A simulated cluster: its hosts, what runs where, what waits."""

    hosts: dict[str, HostSlot]
    running: dict[str, list[PendingJob]]
    pending: list[PendingJob]
    users: list[str]
    limits: dict[str, UserLimits]
    usage: dict[str, float]           # decayed core-seconds per user (fair share history)

    def per_user(self) -> dict[str, tuple[int, int]]:
        jobs: Counter[str] = Counter()
        cores: Counter[str] = Counter()
        for on_host in self.running.values():
            for job in on_host:
                jobs[job.owner] += 1
                cores[job.owner] += job.cores
        return {u: (jobs[u], cores[u]) for u in jobs}

    def share_keys(self, per_user: dict[str, tuple[int, int]]) -> dict[str, float]:
        # hq.server.usage's key: decayed usage plus the cores held now, 600 core-s each
        return {u: self.usage.get(u, 0.0) + per_user.get(u, (0, 0))[1] * 600.0
                for u in self.users}

    def round(self, policy: Policy) -> tuple[float, int]:
        """One timed place_jobs call, then its placements applied; (seconds, placed)."""
        per_user = self.per_user()
        keys = self.share_keys(per_user)
        hosts = list(self.hosts.values())
        gc.collect()
        start = time.perf_counter()
        placements = place_jobs(self.pending, hosts, per_user, policy, keys, self.limits)
        spent = time.perf_counter() - start
        by_id = {j.id: j for j in self.pending}
        for p in placements:
            self.running[p.host].append(by_id[p.job_id])
        placed = {p.job_id for p in placements}
        self.pending = [j for j in self.pending if j.id not in placed]
        self._refresh()
        return spent, len(placements)

    def finish(self, fraction: float, rng: random.Random) -> None:
        """About ``fraction`` of the running jobs end; their owners' usage grows."""
        for on_host in self.running.values():
            kept = []
            for job in on_host:
                if rng.random() < fraction:
                    self.usage[job.owner] = self.usage.get(job.owner, 0.0) + job.cores * 10.0
                else:
                    kept.append(job)
            on_host[:] = kept
        self._refresh()

    def _refresh(self) -> None:
        for name, on_host in self.running.items():
            host = self.hosts[name]
            busy = sum(j.cores for j in on_host)
            memory = sum(j.memory_mb or 0 for j in on_host)
            self.hosts[name] = dataclasses.replace(
                host, free_cores=host.cores - busy, running_jobs=len(on_host),
                free_memory_mb=None if host.memory_mb is None else host.memory_mb - memory)


def make_cluster(hosts: int, cores: int, jobs: int, users: int, seed: int) -> Cluster:
    rng = random.Random(seed)
    names = [f"node{i:04}" for i in range(hosts)]
    slots = {}
    for i, name in enumerate(names):
        # every tenth host has someone working on it: a few cores of other work
        other = float(rng.randint(1, 4)) if i % 10 == 0 else 0.0
        slots[name] = HostSlot(name=name, cores=cores, free_cores=cores, max_jobs=None,
                               running_jobs=0, memory_mb=cores * 4096,
                               free_memory_mb=cores * 4096, other_work=other)
    # constraints become exclusions (hq.server.state: one frozenset per constraint, shared by
    # every job that asks for it): a third of the hosts lack avx512, nine tenths lack bigmem
    lacking = {"avx512": frozenset(n for i, n in enumerate(names) if i % 3 == 0),
               "bigmem": frozenset(n for i, n in enumerate(names) if i % 10 != 0)}
    owners = [f"user{i:02}" for i in range(users)]
    pending = []
    for i in range(1, jobs + 1):
        draw = rng.random()
        excluded = lacking["avx512"] if draw < 0.2 else lacking["bigmem"] if draw < 0.25 \
            else _NONE
        pending.append(PendingJob(id=i, owner=rng.choice(owners),
                                  priority=rng.choice((0, 0, 0, 0, 0, 0, 1, 1, 5)),
                                  cores=rng.choice((1, 1, 1, 2, 2, 4, 8)),
                                  memory_mb=rng.choice((None, None, None, 512, 2048)),
                                  excluded_hosts=excluded))
    # limits on a quarter of the users, tight enough to bind on this cluster
    total = hosts * cores
    limits = {u: UserLimits(max_running=total // 8, max_cores=total // 6)
              for u in owners[::4]}
    usage = {u: rng.uniform(0, 1e6) for u in owners}
    return Cluster(hosts=slots, running={n: [] for n in names}, pending=pending,
                   users=owners, limits=limits, usage=usage)


def baseline_s(count: int, seed: int) -> float:
    rng = random.Random(seed)
    tuples = [(-rng.randint(0, 5), i, f"user{rng.randint(0, 19):02}", rng.randint(1, 8))
              for i in range(count)]
    rng.shuffle(tuples)   # sorted() of sorted input would be a trivial baseline
    gc.collect()
    start = time.perf_counter()
    sorted(tuples)
    return time.perf_counter() - start


def run_once(args: argparse.Namespace, seed: int, hosts: int, jobs: int,
             rounds: int) -> dict[str, float]:
    policy = Policy(fair_share=True, max_running_per_user=0)
    cluster = make_cluster(hosts, args.cores, jobs, args.users, seed)
    rng = random.Random(seed + 1)
    template, next_id = list(cluster.pending), jobs + 1

    def resubmit(count: int) -> None:
        # new submissions keep pending at its size (copies of the first jobs, new ids)
        nonlocal next_id
        cluster.pending.extend(dataclasses.replace(template[k % jobs], id=next_id + k)
                               for k in range(count))
        next_id += count

    fill_s, fill_n = cluster.round(policy)
    resubmit(fill_n)
    steady_s, steady_n = 0.0, 0
    for _ in range(rounds):
        cluster.finish(0.1, rng)
        spent, placed = cluster.round(policy)
        resubmit(placed)
        steady_s, steady_n = steady_s + spent, steady_n + placed
    # a cluster without a free core: every host full
    for name, host in cluster.hosts.items():
        cluster.hosts[name] = dataclasses.replace(host, free_cores=0)
    per_user = cluster.per_user()
    gc.collect()
    start = time.perf_counter()
    place_jobs(cluster.pending, list(cluster.hosts.values()), per_user, policy,
               cluster.share_keys(per_user), cluster.limits)
    full_s = time.perf_counter() - start
    return {"fill_s": fill_s, "fill_placed": fill_n, "steady_s": steady_s,
            "steady_placed": steady_n, "steady_rounds": rounds,
            "steady_jobs_per_s": steady_n / steady_s if steady_s else 0.0,
            "full_s": full_s}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--cores", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=100_000, help="pending jobs")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10, help="steady rounds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-growth", action="store_true", help="skip the growth table")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    base = statistics.median(baseline_s(args.jobs, args.seed + r) for r in range(args.runs))
    main_runs = median_of([run_once(args, args.seed + r, args.hosts, args.jobs, args.rounds)
                           for r in range(args.runs)])
    growth = []
    if not args.no_growth:
        for hosts, jobs in ((args.hosts // 4, args.jobs), (args.hosts * 4, args.jobs),
                            (args.hosts, args.jobs // 4), (args.hosts, args.jobs * 4)):
            figures = median_of([run_once(args, args.seed + r, hosts, jobs, 3)
                                 for r in range(args.runs)])
            growth.append({"hosts": hosts, "pending": jobs, **figures})
    rate = main_runs["steady_jobs_per_s"]
    result = {"hosts": args.hosts, "cores_per_host": args.cores, "pending": args.jobs,
              "users": args.users, "runs": args.runs, "baseline_sorted_s": base,
              "target_jobs_per_s": TARGET_JOBS_PER_S, "met": rate >= TARGET_JOBS_PER_S,
              **main_runs, "growth": growth}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.hosts:,} hosts x {args.cores} cores, {args.jobs:,} pending jobs of "
          f"{args.users} users (fair share, limits on a quarter of them, constraints on a "
          f"quarter of the jobs); median of {args.runs} runs")
    print(f"baseline: sorted() of {args.jobs:,} tuples          {base * 1e3:9.1f} ms")
    print(f"fill: first round, {main_runs['fill_placed']:,.0f} placed         "
          f"{main_runs['fill_s'] * 1e3:9.1f} ms   "
          f"{main_runs['fill_placed'] / main_runs['fill_s']:,.0f} jobs/s, "
          f"{main_runs['fill_s'] / base:.1f}x baseline")
    print(f"steady: {args.rounds} rounds, {main_runs['steady_placed']:,.0f} placed       "
          f"{main_runs['steady_s'] * 1e3:9.1f} ms   {rate:,.0f} jobs/s "
          f"(target {TARGET_JOBS_PER_S:,.0f}: {'met' if result['met'] else 'MISSED'}), "
          f"{main_runs['steady_s'] / args.rounds / base:.1f}x baseline per round")
    print(f"full cluster, no free core                 {main_runs['full_s'] * 1e6:9.1f} µs")
    if growth:
        print("growth (3 steady rounds each):")
        for row in growth:
            per_round = row["steady_s"] / 3
            print(f"  {row['hosts']:>6,} hosts {row['pending']:>8,} pending: "
                  f"{per_round * 1e3:8.1f} ms a round, {row['steady_jobs_per_s']:>9,.0f} jobs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

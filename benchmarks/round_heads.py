"""hq-server's scheduling round against the number of pending jobs (run by hand, never by CI).

    hqVE/bin/python benchmarks/round_heads.py [--hosts 100] [--cores 64] [--free 0.1]
        [--pending 1000,10000,100000,1000000] [--runs 5] [--json]

Issue 11 asks that a round's cost not grow with the number of pending array elements. This
times what ``Dispatcher._place_now`` does in a round, on hq-server's own in-memory state (a
real ``hq.server.state.Cluster``, not the scheduler alone as benchmarks/scheduler.py does):
take the heads of the pending queues (``Cluster.pending_heads``), their scheduler views
(``Cluster.pending_view``), and ``place_jobs``. The cluster: --hosts hosts of --cores cores,
a fraction --free of each host's cores free; pending: one array of N elements of one user,
plus 100 single jobs of a second user. Nothing is dispatched, so every run times the same
round. The baseline is the smallest N, measured in the same process: the figure is each N's
median round time and its ratio to the baseline's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hq.job import Job, Submission
from hq.jobspec import JobSpec
from hq.server.host import Host
from hq.server.scheduler import Policy, place_jobs
from hq.server.state import Cluster
from hq.states import HostState

T0 = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)


def make_cluster(hosts: int, cores: int, free: float, pending: int) -> Cluster:
    cluster = Cluster()
    busy = cores - max(1, int(cores * free))
    for n in range(hosts):
        host = Host(id=n + 1, name=f"n{n:04d}", address="127.0.0.1", ssh_port=22, cores=cores,
                    max_jobs=None, memory_mb=None, active=True, drained=False,
                    drain_reason=None, state=HostState.UP)
        host.used_cores = busy   # what running jobs hold (the round reads only the counts)
        cluster.add_host(host)
    array = JobSpec(command="sim", cwd="/tmp", signature="s", array_indexes=f"1-{pending}")
    cluster.add_submission(Submission(id=1, owner="alice", environment={}, umask=18,
                                      job_count=pending, first_job_id=1,
                                      array_indexes=array.array_indexes))
    for job_id, spec in enumerate(array.elements(), 1):
        cluster.add_job(Job(id=job_id, submission_id=1, owner="alice", owner_id=1, spec=spec,
                            submitted_at=T0, eligible_at=T0, array_id=1))
    cluster.add_submission(Submission(id=2, owner="bob", environment={}, umask=18,
                                      job_count=100, first_job_id=pending + 1))
    single = JobSpec(command="true", cwd="/tmp", signature="s")
    for job_id in range(pending + 1, pending + 101):
        cluster.add_job(Job(id=job_id, submission_id=2, owner="bob", owner_id=2, spec=single,
                            submitted_at=T0, eligible_at=T0))
    return cluster


def one_round(cluster: Cluster, policy: Policy) -> tuple[float, int]:
    """One round's placement as Dispatcher._place_now makes it; (seconds, jobs placed)."""
    start = time.perf_counter()
    slots = [h.slot(0.0, cluster.facts_timeout_s) for h in cluster.usable_hosts(0.0)]
    per_queue = sum(s.free_cores for s in slots) + 64
    views = [cluster.pending_view(job)
             for job in cluster.pending_heads(per_queue, {"alice", "bob"})]
    placed = place_jobs(views, slots, cluster.running_per_user(), policy, None,
                        cluster.user_limits, cluster.group_limits)
    return time.perf_counter() - start, len(placed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--cores", type=int, default=64)
    parser.add_argument("--free", type=float, default=0.1, help="fraction of cores free")
    parser.add_argument("--pending", default="1000,10000,100000,1000000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.pending.split(","))
    policy = Policy(fair_share=True)
    load1 = os.getloadavg()[0]
    figures = []
    for size in sizes:
        cluster = make_cluster(args.hosts, args.cores, args.free, size)
        gc.collect()
        runs = [one_round(cluster, policy) for _ in range(args.runs)]
        figures.append({"pending": size + 100, "round_ms": 1000 * statistics.median(
            r[0] for r in runs), "placed": runs[0][1]})
        del cluster
        gc.collect()
    base = figures[0]["round_ms"]
    for figure in figures:
        figure["ratio_to_smallest"] = figure["round_ms"] / base
    result = {"benchmark": "hq-server round vs pending (benchmarks/round_heads.py)",
              "hosts": args.hosts, "cores": args.cores, "free": args.free, "runs": args.runs,
              "load1_at_start": load1, "figures": figures}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.hosts} hosts x {args.cores} cores, {args.free:.0%} free; medians of "
          f"{args.runs} rounds; load1 {load1:.1f}")
    for figure in figures:
        print(f"  {figure['pending']:>9,} pending: {figure['round_ms']:7.1f} ms a round, "
              f"{figure['placed']:,} placed, x{figure['ratio_to_smallest']:.2f} the smallest")
    return 0


if __name__ == "__main__":
    sys.exit(main())

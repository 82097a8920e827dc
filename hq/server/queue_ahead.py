"""Queueing ahead: which pending jobs go to exec-servers before a core is free there.

An exec-server that keeps a queue starts its next job the moment a core frees, with no round
trip to hq-server; hq-server keeps it fed with about ``LOOKAHEAD_S`` of work per allotted core,
judged by the run times of the submission's jobs that ended. A queued job is ``dispatched``
until its exec-server reports it started, and can be withdrawn (DESIGN §6).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hq.job import Job, Submission
from hq.server.host import Host
from hq.server.scheduler import Policy, group_limit_reached, group_usage
from hq.server.state import Cluster

# Queued ahead at an exec-server: about this many seconds of work per allotted core, judged by
# the run times of the submission's jobs that ended; none while no job of it has ended.
LOOKAHEAD_S = 1.0
MAX_QUEUE_PER_CORE = 128
MAX_QUEUED_PER_ROUND = 20_000   # a round's cost stays bounded; the next round goes on


def queue_depth(submission: Submission | None) -> int:
    """How many of a submission's jobs may wait per allotted core at an exec-server: about
    ``LOOKAHEAD_S`` of work, so that a long job is never stuck behind a busy host."""
    mean = None if submission is None else submission.mean_run_time_s()
    if mean is None:
        return 0
    return min(MAX_QUEUE_PER_CORE, int(LOOKAHEAD_S / max(mean, 1e-4) + 1e-6))


def jobs_to_queue_ahead(cluster: Cluster, policy: Policy, usable: list[Host],
                        blocked: dict[str, frozenset[str]], waiting: set[str]
                        ) -> list[tuple[Job, tuple[str, str]]]:
    """The pending jobs to hand to exec-servers ahead of a free core (DESIGN §7), each with
    the (owner, host) whose exec-server gets it: each exec-server that keeps a queue gets
    enough of its user's pending jobs (of owners in ``waiting``) to keep its allotted cores
    busy for about ``LOOKAHEAD_S``; it starts the next one the moment a core frees, with no
    message in between. Not for jobs that ask for memory or GPUs, nor on hosts with a job
    limit, nor for a user above a fair share while others wait. Decided from the state as it
    is; the caller dispatches them."""
    chosen: list[tuple[Job, tuple[str, str]]] = []
    if not cluster.queue_pairs or not cluster.pending_queues:
        return chosen
    by_name = {h.name: h for h in usable if h.max_jobs is None}
    allotted = cluster.allotted_to()
    share = sum(h.cores for h in by_name.values()) / max(1, len(waiting | set(allotted)))
    limit = policy.max_running_per_user
    running = cluster.running_per_user() if limit or cluster.user_limits else {}
    # group -> [jobs, cores] its members hold, queued-ahead ones included as they go
    group_held = {group: list(held) for group, held in
                  group_usage(running, cluster.user_limits).items()}
    # owner -> [pair, allotment, cores of its active jobs] of the exec-servers to fill
    targets: dict[str, list[list[Any]]] = defaultdict(list)
    for pair in cluster.queue_pairs:
        owner, host_name = pair
        allot = cluster.allotment(owner, host_name)
        if allot <= 0 or owner not in waiting or host_name not in by_name \
                or host_name in blocked.get(owner, ()):
            continue
        if policy.fair_share and len(waiting) > 1 and allotted[owner] > share:
            continue   # let its queue run dry: its cores go to the others' jobs
        targets[owner].append([pair, allot, cluster.pair_cores.get(pair, 0)])
    for owner, pairs in targets.items():
        n_running, n_cores = running.get(owner, (0, 0))
        own = cluster.user_limits.get(owner)
        most = own.max_running if own is not None and own.max_running is not None else limit
        cores_cap = None if own is None else own.max_cores
        groups = own.groups if own is not None else ()
        room = sum(allot * (1 + MAX_QUEUE_PER_CORE) - have for _p, allot, have in pairs)
        for job in cluster.pending_of(owner, max(0, min(room, MAX_QUEUED_PER_ROUND))):
            depth = queue_depth(cluster.submissions.get(job.submission_id))
            spec = job.spec
            if depth == 0 or spec.memory_mb or spec.gpus or (most and n_running >= most) \
                    or (cores_cap is not None and n_cores + spec.cores > cores_cap) \
                    or group_limit_reached(groups, cluster.group_limits, group_held,
                                           spec.cores):
                break   # in order: no job passes the one that cannot be queued
            # the exec-server with the most room for it, relative to its allotment: a
            # user's queue is spread over the hosts it runs on, not piled on the first
            best, best_room = None, 0.0
            excluded = cluster.pending_view(job).excluded_hosts   # constraints included
            for entry in pairs:
                (_owner, host_name), allot, have = entry
                free = allot * (1 + depth) - have - spec.cores
                if spec.cores <= allot and free >= 0 and host_name not in \
                        excluded and (best is None or free / allot > best_room):
                    best, best_room = entry, free / allot
            if best is None:
                break
            chosen.append((job, best[0]))
            best[2] += spec.cores
            n_running += 1
            n_cores += spec.cores
            for group in groups:
                held = group_held.setdefault(group, [0, 0])
                held[0] += 1
                held[1] += spec.cores
    return chosen

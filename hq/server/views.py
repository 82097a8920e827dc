"""What hq-server shows of a job to its owner (``JobInfo``), and why a pending job waits."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence

from hq.array_indexes import compact
from hq.job import Job
from hq.protocol.messages import ArrayLine, AttemptInfo, DependencyInfo, JobInfo, JobWaitState
from hq.server.core import Server
from hq.server.layout import Layout
from hq.server.scheduler import group_usage, pending_reason
from hq.states import JobState


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def job_info(server: Server, job: Job, dependencies: Sequence[DependencyInfo] = (),
             attempts: Sequence[AttemptInfo] = ()) -> JobInfo:
    """Everything about ``job`` that its owner may see; the one place that builds it.
    What it waits for and its earlier runs are read for ``show`` only."""
    spec = job.spec
    return JobInfo(
        id=job.id, name=spec.name, owner=job.owner, state=job.state,
        state_reason=shown_reason(server, job),
        host=job.host, cores=spec.cores, memory_mb=spec.memory_mb, priority=spec.priority,
        group=spec.group, info_text=spec.info_text, submission_id=job.submission_id,
        array_index=spec.array_index, command=spec.command, shell=spec.shell, cwd=spec.cwd,
        stdout=job.stdout_path, stderr=job.stderr_path, log_path=spec.log_path,
        excluded_hosts=list(spec.excluded_hosts), time_limit_s=spec.time_limit_s,
        requeue=spec.requeue, pid=job.pid, exit_code=job.exit_code, signal=job.signal,
        submitted_at=_epoch(job.submitted_at), started_at=_epoch(job.started_at),
        ended_at=_epoch(job.ended_at), cpu_time_s=job.cpu_time_s, max_rss_kb=job.max_rss_kb,
        restart_count=job.restart_count, array_id=job.array_id, retries=spec.retries,
        constraint=spec.constraint, gpus=spec.gpus, gpu_ids=job.gpu_ids,
        retry_count=job.retry_count, resubmit_of=job.resubmit_of,
        dependencies=list(dependencies), attempts=list(attempts))


def array_line(server: Server, members: Sequence[Job], tail: Layout | None = None
               ) -> ArrayLine:
    """One line for the matching ``members`` of one array (in id order) and, while the array
    is laid out, the ``tail`` of elements not stored yet: counts per state, where some run,
    and why its first waiting one waits (one reason looked up, not one per element)."""
    unstored = [] if tail is None else tail.elements(tail.laid_out, tail.laid_out + 1)
    first = (members or unstored)[0]
    counts = Counter(job.state for job in members)
    tail_indexes: Sequence[int] = ()
    if tail is not None:
        counts[tail.state] += tail.tail
        tail_indexes = tail.indexes[tail.laid_out:]
    hosts = sorted({job.host for job in members if job.host and job.state.active})
    waiting = next((job for job in [*members, *unstored]
                    if job.state in (JobState.PENDING, JobState.HELD)), None)
    reason = None if waiting is None else shown_reason(server, waiting)
    indexes = compact([*(job.spec.array_index for job in members
                         if job.spec.array_index is not None), *tail_indexes])
    if len(indexes) > 4096:   # a scattered selection: its span is enough for a line
        ends = [j.spec.array_index or 0 for j in members] + [*tail_indexes[:1],
                                                             *tail_indexes[-1:]]
        indexes = f"{min(ends)}-{max(ends)} (some)"
    return ArrayLine(id=first.array_id or first.id, first=first.id, indexes=indexes,
                     counts=dict(counts), name=first.spec.name, cores=first.spec.cores,
                     hosts=hosts[:4], more_hosts=len(hosts) > 4,
                     submitted_at=_epoch(first.submitted_at), reason=reason,
                     command=first.spec.command[:4096])


def shown_reason(server: Server, job: Job) -> str | None:
    """The reason its owner is shown: the recorded one, or for a pending job without one,
    why it waits now."""
    if job.state is JobState.PENDING and job.reason is None:
        return why_pending(server, job)
    return job.reason


def wait_state(job: Job) -> JobWaitState:
    return JobWaitState(id=job.id, state=job.state, exit_code=job.exit_code, signal=job.signal,
                        reason=job.reason if job.state.finished else None)


def why_pending(server: Server, job: Job) -> str:
    cluster = server.cluster
    waits = cluster.deps.waits_for(job.id)
    if waits:
        first = min(waits)
        more = f" and {len(waits) - 1} more" if len(waits) > 1 else ""
        return f"waiting for job {first} ({waits[first]}){more}"
    sub = cluster.submissions.get(job.submission_id)
    if sub is not None and sub.cap and sub.active >= sub.cap:
        return f"array {sub.first_job_id} has its cap of {sub.cap} running"
    if not cluster.active:
        return "the cluster is deactivated (hq-admin activate)"
    if job.owner not in server.links:
        return f"waiting for the user-server of {job.owner} (any hq-client command starts it)"
    if job.spec.constraint and not set(cluster.hosts) - cluster.lacking(job.spec.constraint):
        return f"no host has the features {job.spec.constraint}"
    now_m = server.clock.monotonic()
    slots = [h.slot(now_m, cluster.facts_timeout_s) for h in cluster.usable_hosts(now_m)]
    if not slots:
        return "no host is taking jobs (all inactive, drained or unreachable)"
    running = cluster.running_per_user()
    return pending_reason(cluster.pending_view(job), slots, list(cluster.hosts), running,
                          server.policy, cluster.user_limits.get(job.owner),
                          cluster.group_limits, group_usage(running, cluster.user_limits))

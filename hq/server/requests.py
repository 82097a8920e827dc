"""What a user may ask hq-server (through their user-server): submit, look, cancel, wait.

Every handler works on the caller's own jobs only. A job of someone else gets the very same
``not_found`` answer as a job that does not exist, so ids reveal nothing. Other users' jobs
appear at most as counts per owner and state.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fnmatch
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hq import __version__
from hq.db.events import Event, record_events
from hq.db.jobs import find_job, insert_submission, list_finished_jobs
from hq.errors import NotFound, UsageError
from hq.jobspec import JobSpec
from hq.server.loading import job_from_row
from hq.server.scheduler import pending_reason
from hq.server.state import Job
from hq.states import EventKind, JobState

if TYPE_CHECKING:
    from hq.server.core import ServerContext, Session

MAX_JOBS_PER_SUBMIT = 1_000_000
MAX_WAIT_S = 60.0
WAIT_COALESCE_S = 0.05


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _ids(message: dict[str, Any], key: str = "ids") -> list[int]:
    ids = message.get(key)
    if not isinstance(ids, list) or not ids or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise UsageError(f"{key} must be a non-empty list of job ids")
    return ids


# --- submit --------------------------------------------------------------------------------

def _check_submission(ctx: ServerContext, message: dict[str, Any]) -> tuple[
        list[JobSpec], dict[str, str], int, str, bool]:
    jobs = message.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise UsageError("a submission needs at least one job")
    if len(jobs) > MAX_JOBS_PER_SUBMIT:
        raise UsageError(f"a submission may hold at most {MAX_JOBS_PER_SUBMIT} jobs")
    env = message.get("environment")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in env.items()):
        raise UsageError("environment must map names to strings")
    umask = message.get("umask")
    if not isinstance(umask, int) or not 0 <= umask <= 0o777:
        raise UsageError("umask must be a number from 0 to 0777")
    submit_host = str(message.get("submit_host") or "unknown")[:255]
    specs = [JobSpec.from_wire(j) for j in jobs]
    hosts = [h for h in ctx.cluster.hosts.values() if not h.retired]
    if not hosts:
        raise UsageError("the cluster has no hosts (etc/cluster.tab)")
    most_cores = max(h.cores for h in hosts)
    declared = [h.memory_mb for h in hosts if h.memory_mb is not None]
    # only when every host declares its memory can a request be too big for all of them
    most_memory = max(declared) if len(declared) == len(hosts) else None
    known = set(ctx.cluster.hosts)
    for n, spec in enumerate(specs, 1):
        problem = None
        if not spec.signature:
            problem = "unsigned job: submit through hq-submit"
        elif spec.cores > most_cores:
            problem = f"asks for {spec.cores} cores, but the largest host has {most_cores}"
        elif spec.memory_mb and most_memory is not None and spec.memory_mb > most_memory:
            problem = (f"asks for {spec.memory_mb} MiB, but the largest host has "
                       f"{most_memory} MiB")
        elif unknown := set(spec.excluded_hosts) - known:
            problem = f"--excludeHosts names unknown host(s): {', '.join(sorted(unknown))}"
        if problem is not None:
            where = f"job {n} of {len(specs)}: " if len(specs) > 1 else ""
            raise UsageError(where + problem)
    return specs, env, umask, submit_host, bool(message.get("hold"))


def _job_row(job_id: int, sub_id: int, owner_id: int, spec: JobSpec, state: JobState,
             now: dt.datetime) -> dict[str, Any]:
    return {
        "id": job_id, "submission_id": sub_id, "array_index": spec.array_index,
        "owner_id": owner_id, "name": spec.name, "command": spec.command, "shell": spec.shell,
        "cwd": spec.cwd, "cores": spec.cores, "memory_mb": spec.memory_mb,
        "priority": spec.priority, "group_name": spec.group, "info_text": spec.info_text,
        "time_limit_s": spec.time_limit_s, "estimated_time_s": spec.estimated_time_s,
        "estimated_memory_mb": spec.estimated_memory_mb, "stdout_path": spec.stdout,
        "stderr_path": spec.stderr, "log_path": spec.log_path,
        "excluded_hosts": ",".join(spec.excluded_hosts), "requeue": spec.requeue,
        "signature": spec.signature, "state": state, "submitted_at": now,
        "eligible_at": None if state is JobState.HELD else now, "restart_count": 0,
    }


async def submit(ctx: ServerContext, session: Session, message: dict[str, Any]) -> dict:
    specs, env, umask, submit_host, hold = _check_submission(ctx, message)
    cluster, owner = ctx.cluster, session.user
    now = _now()
    state = JobState.HELD if hold else JobState.PENDING
    sub_id = cluster.next_submission_id
    first = cluster.next_job_id
    cluster.next_submission_id += 1
    cluster.next_job_id += len(specs)
    ids = list(range(first, first + len(specs)))
    submission = {"id": sub_id, "owner_id": owner.id, "submitted_at": now,
                  "submit_host": submit_host, "environment": env, "umask": umask,
                  "job_count": len(specs)}
    rows = [_job_row(i, sub_id, owner.id, s, state, now) for i, s in zip(ids, specs, strict=True)]
    span = f"{ids[0]}" if len(ids) == 1 else f"{ids[0]}-{ids[-1]}"
    event = Event(at=now, kind=EventKind.JOB, job_id=ids[0], user_name=owner.name,
                  new_state=str(state),
                  message=f"submission {sub_id}: {len(ids)} job(s) {span} by {owner.name} "
                          f"from {submit_host}")

    def work(conn: Any) -> None:
        insert_submission(conn, submission, rows)
        record_events(conn, [event])

    await ctx.store.write(work, what=f"submission {sub_id} of {owner.name}",
                          refuse_when_down=True)
    cluster.add_submission(sub_id, owner.name, env, umask)
    for job_id, spec in zip(ids, specs, strict=True):
        cluster.add_job(Job(
            id=job_id, submission_id=sub_id, owner=owner.name, owner_id=owner.id, spec=spec,
            submitted_at=now, state=state, eligible_at=None if hold else now))
    ctx.dispatcher.wake()
    return {"ids": ids, "submission_id": sub_id}


# --- looking --------------------------------------------------------------------------------

def job_info(ctx: ServerContext, job: Job) -> dict[str, Any]:
    spec = job.spec
    reason = job.pending_reason
    if job.state is JobState.PENDING:
        reason = _why_pending(ctx, job) if reason is None else reason
    return {
        "id": job.id, "name": spec.name, "owner": job.owner, "state": str(job.state),
        "pending_reason": reason, "host": job.host, "cores": spec.cores,
        "memory_mb": spec.memory_mb, "priority": spec.priority, "group": spec.group,
        "info_text": spec.info_text, "submission_id": job.submission_id,
        "array_index": spec.array_index, "command": spec.command, "shell": spec.shell,
        "cwd": spec.cwd, "stdout": job.stdout_path, "stderr": job.stderr_path,
        "log_path": spec.log_path, "excluded_hosts": list(spec.excluded_hosts),
        "time_limit_s": spec.time_limit_s, "requeue": spec.requeue, "pid": job.pid,
        "exit_code": job.exit_code, "signal": job.signal,
        "submitted_at": _epoch(job.submitted_at), "started_at": _epoch(job.started_at),
        "ended_at": _epoch(job.ended_at), "cpu_time_s": job.cpu_time_s,
        "max_rss_kb": job.max_rss_kb, "restart_count": job.restart_count,
    }


def _why_pending(ctx: ServerContext, job: Job) -> str:
    cluster = ctx.cluster
    if not cluster.active:
        return "the cluster is deactivated (hq-admin activate)"
    if job.owner not in ctx.links:
        return f"waiting for the user-server of {job.owner} (any hq-client command starts it)"
    slots = [h.slot() for h in cluster.usable_hosts()]
    if not slots:
        return "no host is taking jobs (all inactive, drained or unreachable)"
    return pending_reason(job.pending_view, slots, list(cluster.hosts),
                          cluster.running_per_user(), ctx.policy)


def _own(ctx: ServerContext, session: Session, job_id: int) -> Job | None:
    job = ctx.cluster.jobs.get(job_id)
    return job if job is not None and job.owner == session.user.name else None


async def show(ctx: ServerContext, session: Session, message: dict[str, Any]) -> dict:
    job_id = message.get("id")
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise UsageError("show needs a job id")
    job = _own(ctx, session, job_id)
    if job is not None:
        return {"job": job_info(ctx, job)}
    row = await ctx.store.read(lambda conn: find_job(conn, job_id), what=f"show {job_id}")
    if row is None or row.owner != session.user.name:
        raise NotFound(f"no such job: {job_id}")
    return {"job": job_info(ctx, job_from_row(row))}


async def jobs(ctx: ServerContext, session: Session, message: dict[str, Any]) -> dict:
    states = message.get("states")
    wanted = None if not states else {JobState(s) for s in states}
    ids = message.get("ids")
    group, pattern = message.get("group"), message.get("name")
    limit = message.get("limit")
    found = [j for j in ctx.cluster.jobs.values() if j.owner == session.user.name]
    if wanted is None or wanted & {JobState.DONE, JobState.FAILED, JobState.CANCELLED}:
        seen = {j.id for j in found}
        rows = await ctx.store.read(
            lambda conn: list_finished_jobs(conn, session.user.id, limit=limit or 1000,
                                            ids=ids),
            what="list finished jobs")
        infos = [job_info(ctx, j) for j in found] + [job_info(ctx, job_from_row(r)) for r in rows
                                                     if r.id not in seen]
    else:
        infos = [job_info(ctx, j) for j in found]
    infos = [i for i in infos
             if (wanted is None or JobState(i["state"]) in wanted)
             and (ids is None or i["id"] in ids)
             and (group is None or i["group"] == group)
             and (pattern is None or fnmatch.fnmatchcase(i["name"] or "", pattern))]
    infos.sort(key=lambda i: i["id"])
    if isinstance(limit, int) and limit > 0:
        infos = infos[-limit:]
    return {"jobs": infos}


def status(ctx: ServerContext, session: Session, message: dict[str, Any]) -> dict:
    me = session.user.name
    others: dict[str, dict[str, int]] = {}
    for (owner, state), n in ctx.cluster.counts.items():
        if owner != me and n:
            others.setdefault(owner, {})[str(state)] = n
    hosts = [h for h in ctx.cluster.hosts.values() if not h.retired]
    return {"user": me, "mine": ctx.cluster.counts_of(me), "others": others,
            "cluster": {"active": ctx.cluster.active, "hosts": len(hosts),
                        "hosts_up": len(ctx.cluster.usable_hosts()),
                        "cores": sum(h.cores for h in hosts),
                        "cores_busy": sum(h.used_cores for h in hosts)}}


def ping(ctx: ServerContext, session: Session, message: dict[str, Any]) -> dict:
    return {"user": session.user.name, "server_version": __version__,
            "unfinished": ctx.cluster.unfinished_of(session.user.name)}


# --- changing -------------------------------------------------------------------------------

def cancel(ctx: ServerContext, session: Session, message: dict[str, Any]) -> dict:
    now, results, changes = _now(), [], []
    cancels: dict[str, list[int]] = {}
    for job_id in _ids(message):
        job = _own(ctx, session, job_id)
        if job is None:
            results.append({"id": job_id, "result": "not found"})
        elif job.state.finished:
            results.append({"id": job_id, "result": f"already {job.state}"})
        elif job.state in (JobState.PENDING, JobState.HELD):
            changes.append(ctx.cluster.transition(job, JobState.CANCELLED, now,
                                                  reason=f"cancelled by {session.user.name}",
                                                  ended_at=now))
            results.append({"id": job_id, "result": "cancelled"})
        else:
            job.cancel_requested = True
            cancels.setdefault(job.host or "", []).append(job.id)
            results.append({"id": job_id, "result": "cancelling"})
    if changes:
        ctx.dispatcher.record(changes, what=f"cancel by {session.user.name}")
    link = ctx.links.get(session.user.name)
    if link is not None:
        for host, ids in cancels.items():
            link.send({"type": "cancel", "host": host, "ids": ids, "reason": "cancelled"})
    return {"results": results}


def _hold_or_release(ctx: ServerContext, session: Session, message: dict[str, Any],
                     hold: bool) -> dict:
    now, results, changes = _now(), [], []
    source, target = ((JobState.PENDING, JobState.HELD) if hold
                      else (JobState.HELD, JobState.PENDING))
    for job_id in _ids(message):
        job = _own(ctx, session, job_id)
        if job is None:
            results.append({"id": job_id, "result": "not found"})
        elif job.state is not source:
            results.append({"id": job_id,
                            "result": f"not {'pending' if hold else 'held'} ({job.state})"})
        else:
            extra = {} if hold else {"eligible_at": now}
            changes.append(ctx.cluster.transition(job, target, now, **extra))
            results.append({"id": job_id, "result": "held" if hold else "released"})
    if changes:
        ctx.dispatcher.record(changes, what=f"{'hold' if hold else 'release'} by "
                                            f"{session.user.name}")
        ctx.dispatcher.wake()
    return {"results": results}


def hold(ctx: ServerContext, session: Session, message: dict[str, Any]) -> dict:
    return _hold_or_release(ctx, session, message, hold=True)


def release(ctx: ServerContext, session: Session, message: dict[str, Any]) -> dict:
    return _hold_or_release(ctx, session, message, hold=False)


async def wait(ctx: ServerContext, session: Session, message: dict[str, Any]) -> dict:
    ids = _ids(message)
    timeout = min(float(message.get("timeout_s") or 1.0), MAX_WAIT_S)
    deadline = time.monotonic() + timeout
    latest: dict[int, dict[str, Any]] = {}
    while True:
        # finished jobs do not change any more: look again only at the others
        unfinished = [i for i in ids if i not in latest
                      or not JobState(latest[i]["state"]).finished]
        for state in await _states_of(ctx, session, unfinished):
            latest[state["id"]] = state
        finished = all(JobState(s["state"]).finished for s in latest.values())
        remaining = deadline - time.monotonic()
        if finished or remaining <= 0:
            return {"jobs": [latest[i] for i in sorted(latest)], "finished": finished}
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.dispatcher.finished.wait(), remaining)
        # jobs often end in bursts: one look after the burst instead of one per job
        await asyncio.sleep(min(WAIT_COALESCE_S, max(0.0, deadline - time.monotonic())))


async def _states_of(ctx: ServerContext, session: Session,
                     ids: Iterable[int]) -> list[dict[str, Any]]:
    out, missing = [], []
    for job_id in ids:
        job = _own(ctx, session, job_id)
        if job is None:
            missing.append(job_id)
        else:
            out.append({"id": job.id, "state": str(job.state), "exit_code": job.exit_code,
                        "signal": job.signal})
    for job_id in missing:
        row = await ctx.store.read(lambda conn, j=job_id: find_job(conn, j), what="wait")
        if row is None or row.owner != session.user.name:
            raise NotFound(f"no such job: {job_id}")
        out.append({"id": row.id, "state": str(row.state), "exit_code": row.exit_code,
                    "signal": row.signal_number})
    return sorted(out, key=lambda s: s["id"])


USER_REQUESTS = {"ping": ping, "submit": submit, "status": status, "jobs": jobs,
                 "show": show, "cancel": cancel, "hold": hold, "release": release,
                 "wait": wait}

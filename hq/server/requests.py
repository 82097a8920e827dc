"""What a user may ask hq-server (through their user-server): submit (``hq.server.submitting``),
look, change (``hq.server.changing``: cancel, hold, release), wait.

Every handler works on the caller's own jobs only. A job of someone else gets the very same
``not_found`` answer as a job that does not exist, so ids reveal nothing. Other users' jobs
appear at most as counts per owner and state. ``USER_REQUESTS`` maps each request class to its
handler; the request arrives decoded and checked (``hq.protocol.messages``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fnmatch
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from hq import __version__
from hq.db.dependencies import dependencies_of
from hq.db.jobs import list_attempts, list_finished_jobs
from hq.errors import NotFound
from hq.job import Job
from hq.protocol.messages import (
    MAX_PAGE,
    ArrayCounts,
    ArrayElements,
    AttemptInfo,
    Cancel,
    ClusterSummary,
    DependencyInfo,
    Hold,
    Jobs,
    JobSpecs,
    JobsReply,
    JobWaitState,
    Ping,
    PingReply,
    Release,
    ReserveSubmission,
    Show,
    ShowReply,
    Status,
    StatusReply,
    Submit,
    SubmitPart,
    UpdateArray,
    Wait,
    WaitReply,
    Watch,
)
from hq.server.changing import cancel, changing, hold, release
from hq.server.core import Server, Session
from hq.server.submitting import reserve, submit, submit_part
from hq.server.views import array_line, job_info, wait_state
from hq.server.watch import watch
from hq.server.workflows import array_counts, find_elements, job_specs, update_array
from hq.states import FINISHED_JOB_STATES

MAX_WAIT_S = 60.0
WAIT_COALESCE_S = 0.05

Handler = Callable[[Server, Session, Any], Awaitable[Any] | Any]


# --- looking --------------------------------------------------------------------------------

async def _own_or_recorded(server: Server, session: Session, job_id: int) -> Job:
    """The caller's job ``job_id`` from memory or the database; NotFound otherwise."""
    job = await server.own_job(session.user.name, job_id)
    if job is None:
        raise NotFound(f"no such job: {job_id}")
    return job


async def show(server: Server, session: Session, request: Show) -> ShowReply:
    job = await _own_or_recorded(server, session, request.id)
    dependencies, attempts = await server.store.read(
        lambda conn: (dependencies_of(conn, job.id),
                      list_attempts(conn, job.id) if job.spec.retries else []),
        what=f"job {job.id}")
    now = server.cluster.state_now
    return ShowReply(job=job_info(
        server, job, [DependencyInfo(on, str(kind), now(on, state))
                      for on, kind, state in dependencies],
        [AttemptInfo(attempt=a["attempt"], state=a["state"], reason=a["reason"],
                     host=a["host_name"], exit_code=a["exit_code"], signal=a["signal_number"],
                     started_at=_epoch(a["started_at"]), ended_at=_epoch(a["ended_at"]))
         for a in attempts]))


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


async def jobs(server: Server, session: Session, request: Jobs) -> JobsReply:
    """The newest ``limit`` of the caller's jobs that match, below ``before``; its cost is
    what it answers (the caller's own jobs in memory are indexed, finished ones come from an
    index-backed query on the reader thread)."""
    wanted = None if not request.states else set(request.states)
    limit = request.limit or MAX_PAGE
    before = request.before or 2**62
    me, cluster = session.user.name, server.cluster
    array = None
    if request.array is not None:
        array = (await server.own_array(me, request.array)).submission_id

    def matches(job: Job) -> bool:
        return ((wanted is None or job.state in wanted)
                and (array is None or job.submission_id == array)
                and (request.group is None or job.spec.group == request.group)
                and (request.name is None
                     or fnmatch.fnmatchcase(job.spec.name or "", request.name)))

    if request.fold and request.ids is None and wanted is not None \
            and not wanted & FINISHED_JOB_STATES:
        return _folded(server, me, matches, limit, before, first_page=request.before is None)
    await server.layouts.settled(me)   # a listing of every job: all of them stored
    found: dict[int, Job] = {}
    if request.ids is not None:
        for job_id in request.ids:
            job = cluster.own_job(me, job_id)
            if job is not None and job_id < before and matches(job):
                found[job_id] = job
    else:
        # newest first, and no further than needed: unfinished ones, then finished in memory
        for job in reversed(cluster.unfinished_by_owner.get(me, {}).values()):
            if job.id < before and matches(job):
                found[job.id] = job
                if len(found) > limit:
                    break
        if wanted is None or wanted & FINISHED_JOB_STATES:
            for job in reversed(cluster.recent_finished.values()):
                if job.owner == me and job.id < before and matches(job):
                    found[job.id] = job
    if wanted is None or wanted & FINISHED_JOB_STATES:
        recorded = await server.store.read(
            lambda conn: list_finished_jobs(conn, session.user.id, limit=limit + 1,
                                            ids=request.ids, before=before,
                                            states=wanted, group=request.group,
                                            submission_id=array),
            what="list finished jobs")
        for job in recorded:
            if matches(job):
                found.setdefault(job.id, job)
    newest = sorted(found, reverse=True)
    page = sorted(newest[:limit])
    return JobsReply(jobs=[job_info(server, found[i]) for i in page], more=len(newest) > limit)


def _folded(server: Server, me: str, matches: Callable[[Job], bool], limit: int,
            before: int, *, first_page: bool) -> JobsReply:
    """The caller's unfinished jobs that match, from memory: each array with more than one
    of them as a line (on the first page), the other jobs the newest ``limit`` below
    ``before``. Its cost is a pass over the caller's unfinished jobs, and the answer is as
    long as what it shows, however large the arrays."""
    singles: list[Job] = []
    elements: dict[int, list[Job]] = {}
    for job in reversed(server.cluster.unfinished_by_owner.get(me, {}).values()):
        if not matches(job):
            continue
        if job.array_id is not None:
            elements.setdefault(job.array_id, []).append(job)
        elif job.id < before:
            singles.append(job)
    arrays = []
    # the elements not stored yet match as the first of them would
    tails = {array_id: tail for array_id, tail in server.layouts.tails_of(me).items()
             if matches(tail.elements(tail.laid_out, tail.laid_out + 1)[0])}
    for array_id in tails:
        elements.setdefault(array_id, [])
    for array_id, members in elements.items():
        members.reverse()   # in id order
        tail = tails.get(array_id)
        if len(members) > 1 or tail is not None:
            if first_page:
                arrays.append(array_line(server, members, tail))
        elif members[0].id < before:
            singles.append(members[0])
    singles.sort(key=lambda job: job.id, reverse=True)
    page = sorted(singles[:limit], key=lambda job: job.id)
    return JobsReply(jobs=[job_info(server, job) for job in page], more=len(singles) > limit,
                     arrays=sorted(arrays, key=lambda line: line.first)[:MAX_PAGE])


def status(server: Server, session: Session, request: Status) -> StatusReply:
    me, cluster = session.user.name, server.cluster
    others: dict[str, dict[str, int]] = {}
    for (owner, state), n in cluster.counts.items():
        if owner != me and n:
            others.setdefault(owner, {})[str(state)] = n
    hosts = [h for h in cluster.hosts.values() if not h.retired]
    return StatusReply(user=me, mine=cluster.counts_of(me), others=others,
                       cluster=ClusterSummary(
                           active=cluster.active, hosts=len(hosts),
                           hosts_up=len(cluster.usable_hosts(server.clock.monotonic())),
                           cores=sum(h.cores for h in hosts),
                           cores_busy=sum(h.used_cores for h in hosts)),
                       usage_core_hours=round(
                           cluster.usage.of(me, server.clock.now().timestamp()) / 3600, 3))


def ping(server: Server, session: Session, request: Ping) -> PingReply:
    return PingReply(user=session.user.name, server_version=__version__,
                     unfinished=server.cluster.unfinished_of(session.user.name))


async def wait(server: Server, session: Session, request: Wait) -> WaitReply:
    timeout = min(request.timeout_s or 1.0, MAX_WAIT_S)
    deadline = server.clock.monotonic() + timeout

    async def look(job_id: int) -> JobWaitState:
        latest[job_id] = wait_state(await _own_or_recorded(server, session, job_id))
        return latest[job_id]

    latest: dict[int, JobWaitState] = {}
    open_ids = [i for i in dict.fromkeys(request.ids) if not (await look(i)).state.finished]
    while True:
        remaining = deadline - server.clock.monotonic()
        if not open_ids or remaining <= 0:
            for job_id in open_ids[1:]:   # the answer has every job's latest state
                await look(job_id)
            return WaitReply(jobs=[latest[i] for i in sorted(latest)], finished=not open_ids)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.journal.finished.wait(), remaining)
        # jobs often end in bursts: one look after the burst instead of one per job
        await asyncio.sleep(min(WAIT_COALESCE_S, max(0.0, deadline - server.clock.monotonic())))
        # finished jobs do not change any more; of the others, look up to the first one
        # still going (the rest are looked at once it is done, or for the answer)
        done = 0
        while done < len(open_ids) and (await look(open_ids[done])).state.finished:
            done += 1
        open_ids = open_ids[done:]


def _after_layout(handler: Handler) -> Handler:
    """``handler`` of a request that only looks at the jobs it names one by one, once they
    are stored (an array of the caller's still being stored holds none of them:
    ``hq.server.layout``). Changes wait for every array of the caller's instead
    (``hq.server.changing``)."""
    async def after_layout(server: Server, session: Session, request: Any) -> Any:
        named = [request.id] if isinstance(request, Show) else request.ids
        await server.layouts.settled(session.user.name, ids=named)
        result = handler(server, session, request)
        return await result if inspect.isawaitable(result) else result
    return after_layout


USER_REQUESTS: dict[type, Handler] = {
    Ping: ping, ReserveSubmission: reserve, Submit: submit, SubmitPart: submit_part,
    Status: status, Jobs: jobs, Show: _after_layout(show), Cancel: changing(cancel),
    Hold: changing(hold), Release: changing(release), Wait: _after_layout(wait),
    UpdateArray: update_array, ArrayCounts: array_counts, ArrayElements: find_elements,
    JobSpecs: _after_layout(job_specs), Watch: watch,
}

"""What a user may ask hq-server (through their user-server): submit (``hq.server.submitting``),
look, cancel, wait.

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
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hq import __version__
from hq.db.dependencies import dependencies_of
from hq.db.jobs import find_job, list_attempts, list_finished_jobs, submission_counts
from hq.errors import NotFound
from hq.job import Job
from hq.protocol.messages import (
    MAX_PAGE,
    ArrayChanges,
    ArrayCounts,
    AttemptInfo,
    Cancel,
    ChangeResult,
    ChangesReply,
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
from hq.server.core import Server, Session
from hq.server.submitting import reserve, submit, submit_part
from hq.server.views import array_line, job_info, wait_state
from hq.server.watch import watch
from hq.server.workflows import array_counts, job_specs, update_array
from hq.states import FINISHED_JOB_STATES, JobState

MAX_WAIT_S = 60.0
WAIT_COALESCE_S = 0.05

Handler = Callable[[Server, Session, Any], Awaitable[Any] | Any]


# --- looking --------------------------------------------------------------------------------

async def _own_or_recorded(server: Server, session: Session, job_id: int) -> Job:
    """The caller's job ``job_id`` from memory or the database; NotFound otherwise."""
    job = server.cluster.own_job(session.user.name, job_id)
    if job is not None:
        return job
    found = await server.store.read(lambda conn: find_job(conn, job_id), what=f"job {job_id}")
    if found is None or found.owner != session.user.name:
        raise NotFound(f"no such job: {job_id}")
    return found


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
        head = await _own_or_recorded(server, session, request.array)
        if head.array_id != head.id:
            raise NotFound(f"no such array: {request.array}")
        array = head.submission_id

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


# --- changing -------------------------------------------------------------------------------

def _own_jobs(server: Server, session: Session, ids: Iterable[int]
              ) -> tuple[list[Job], list[int]]:
    mine, missing = [], []
    for job_id in dict.fromkeys(ids):
        job = server.cluster.own_job(session.user.name, job_id)
        (mine.append(job) if job is not None else missing.append(job_id))
    return mine, missing


@dataclass(frozen=True, slots=True)
class WholeArray:
    """An array named whole by a change: its unfinished jobs, and its finished ones counted."""

    id: int
    unfinished: list[Job]
    finished: dict[JobState, int]


async def _whole_arrays(server: Server, session: Session, arrays: Iterable[int]
                        ) -> list[WholeArray]:
    """The caller's ``arrays``, each found whole: a pass over the caller's unfinished jobs,
    and the database only for an array whose jobs have all finished. NotFound names the
    first id that is not an array of the caller's, before anything is changed."""
    me, cluster = session.user.name, server.cluster
    heads: list[Job] = []
    for array in dict.fromkeys(arrays):
        try:
            head: Job | None = await _own_or_recorded(server, session, array)
        except NotFound:
            head = None
        if head is None or head.array_id != head.id:
            raise NotFound(f"no such array: {array}")
        heads.append(head)
    recorded: dict[int, dict[JobState, int]] = {}
    while gone := [h.submission_id for h in heads if h.submission_id not in cluster.submissions
                   and h.submission_id not in recorded]:
        await server.journal.committed()   # all ended: the database counts them
        for sub_id in gone:
            stored = await server.store.read(lambda conn, sub_id=sub_id: submission_counts(
                conn, sub_id), what=f"counts of submission {sub_id}")
            recorded[sub_id] = {JobState(state): n for state, n in stored.items()}
    # no await from here on: what is found is what the change sees
    members: dict[int, list[Job]] = {head.submission_id: [] for head in heads}
    for job in cluster.unfinished_by_owner.get(me, {}).values():
        if job.submission_id in members:
            members[job.submission_id].append(job)
    found = []
    for head in heads:
        sub = cluster.submissions.get(head.submission_id)
        found.append(WholeArray(head.id, members[head.submission_id],
                                dict(+sub.finished) if sub is not None
                                else recorded[head.submission_id]))
    return found


def _resolving_arrays(handler: Callable[..., ChangesReply]) -> Handler:
    """``handler`` given the whole arrays its request names (``WholeArray``)."""
    async def resolving(server: Server, session: Session, request: Any) -> ChangesReply:
        arrays = await _whole_arrays(server, session, request.arrays) if request.arrays else []
        return handler(server, session, request, arrays)
    return resolving


def _results(order: Iterable[int], results: dict[int, str], arrays: Sequence[WholeArray] = (),
             array_results: Sequence[dict[int, str]] = (), ended: str = "") -> ChangesReply:
    """The reply of a change: a result per job named by id, and for each whole array its
    results counted (``ended`` says what its finished jobs got, e.g. ``already {state}``)."""
    counted = []
    for array, changed in zip(arrays, array_results, strict=True):
        tally = Counter(changed.values())
        for state, n in array.finished.items():
            tally[ended.format(state=state)] += n
        counted.append(ArrayChanges(array.id, dict(tally)))
    return ChangesReply(results=[ChangeResult(i, results.get(i, "not found"))
                                 for i in dict.fromkeys(order)], arrays=counted)


def _change(server: Server, session: Session, request: Cancel | Hold | Release,
            arrays: Sequence[WholeArray], change: Callable[[Iterable[Job]], dict[int, str]],
            ended: str) -> ChangesReply:
    mine, _missing = _own_jobs(server, session, request.ids)
    return _results(request.ids, change(mine), arrays,
                    [change(array.unfinished) for array in arrays], ended)


def cancel(server: Server, session: Session, request: Cancel,
           arrays: Sequence[WholeArray] = ()) -> ChangesReply:
    return _change(server, session, request, arrays,
                   lambda jobs: server.dispatcher.cancel(jobs, by=session.user.name),
                   "already {state}")


def _hold_or_release(server: Server, jobs: Iterable[Job], hold: bool) -> dict[int, str]:
    source, target = ((JobState.PENDING, JobState.HELD) if hold
                      else (JobState.HELD, JobState.PENDING))
    results: dict[int, str] = {}
    withdrawing = []
    for job in jobs:
        if hold and job.state is JobState.DISPATCHED and not job.cancel_requested:
            withdrawing.append(job)   # queued ahead at an exec-server: ask for it back
        elif not hold and job.hold_requested:
            job.hold_requested = False
            results[job.id] = "released"
        elif job.state is not source:
            results[job.id] = f"not {source} ({job.state})"
        elif hold:
            server.journal.job(job, target)
            results[job.id] = "held"
        else:
            server.journal.job(job, target, eligible_at=server.clock.now())
            results[job.id] = "released"
    asked = {job.id for job in server.dispatcher.withdraw(withdrawing)}
    for job in withdrawing:
        if job.id in asked:
            job.hold_requested = True
            results[job.id] = "holding (if it has not started)"
        else:
            results[job.id] = f"not {source} ({job.state})"
    server.dispatcher.wake()
    return results


def hold(server: Server, session: Session, request: Hold,
         arrays: Sequence[WholeArray] = ()) -> ChangesReply:
    return _change(server, session, request, arrays,
                   lambda jobs: _hold_or_release(server, jobs, hold=True), "not pending ({state})")


def release(server: Server, session: Session, request: Release,
            arrays: Sequence[WholeArray] = ()) -> ChangesReply:
    return _change(server, session, request, arrays,
                   lambda jobs: _hold_or_release(server, jobs, hold=False), "not held ({state})")


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
    """``handler``, once the caller's arrays are all stored (``hq.server.layout``): its
    request names jobs one by one, and each must be found."""
    async def after_layout(server: Server, session: Session, request: Any) -> Any:
        await server.layouts.settled(session.user.name)
        result = handler(server, session, request)
        return await result if inspect.isawaitable(result) else result
    return after_layout


USER_REQUESTS: dict[type, Handler] = {
    Ping: ping, ReserveSubmission: reserve, Submit: submit, SubmitPart: submit_part,
    Status: status, Jobs: jobs, Show: _after_layout(show),
    Cancel: _after_layout(_resolving_arrays(cancel)),
    Hold: _after_layout(_resolving_arrays(hold)),
    Release: _after_layout(_resolving_arrays(release)), Wait: _after_layout(wait),
    UpdateArray: update_array, ArrayCounts: array_counts, JobSpecs: _after_layout(job_specs),
    Watch: watch,
}

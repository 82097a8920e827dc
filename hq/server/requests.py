"""What a user may ask hq-server (through their user-server): submit, look, cancel, wait.

Every handler works on the caller's own jobs only. A job of someone else gets the very same
``not_found`` answer as a job that does not exist, so ids reveal nothing. Other users' jobs
appear at most as counts per owner and state. ``USER_REQUESTS`` maps each request class to its
handler; the request arrives decoded and checked (``hq.protocol.messages``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import fnmatch
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec

from hq import __version__
from hq.constraints import missing
from hq.constraints import parse as parse_constraint
from hq.db.dependencies import dependencies_of
from hq.db.jobs import find_job, list_attempts, list_finished_jobs
from hq.errors import Busy, NotFound, UsageError
from hq.job import Job, Submission
from hq.jobspec import JobSpec
from hq.protocol.messages import (
    MAX_PAGE,
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
    PartReply,
    Ping,
    PingReply,
    Release,
    ReserveReply,
    ReserveSubmission,
    Show,
    ShowReply,
    Status,
    StatusReply,
    Submit,
    SubmitPart,
    SubmitReply,
    UpdateArray,
    Wait,
    WaitReply,
    Watch,
)
from hq.server.core import Server, Session
from hq.server.memory import release_free_memory
from hq.server.views import array_line, job_info, wait_state
from hq.server.watch import watch
from hq.server.workflows import (
    job_specs,
    never_met,
    resolve_dependencies,
    resubmitted,
    unmet,
    update_array,
)
from hq.states import FINISHED_JOB_STATES, JobState

MAX_WAIT_S = 60.0
WAIT_COALESCE_S = 0.05

Handler = Callable[[Server, Session, Any], Awaitable[Any] | Any]


# --- submit --------------------------------------------------------------------------------

def check_fits(server: Server, specs: list[JobSpec], first: int | None = None) -> None:
    """Refuse a submission that could never run here (the spec itself was validated when
    the request was decoded). ``first``: the number of ``specs[0]`` in a streamed one."""
    cluster = server.cluster
    hosts = [h for h in cluster.hosts.values() if not h.retired]
    if not hosts:
        raise UsageError("the cluster has no hosts (etc/cluster.tab)")
    most_cores = max(h.cores for h in hosts)
    most_gpus = max(len(h.gpus) for h in hosts)
    declared = [h.memory_mb for h in hosts if h.memory_mb is not None]
    # only when every host declares its memory can a request be too big for all of them
    most_memory = max(declared) if len(declared) == len(hosts) else None
    known = set(cluster.hosts)
    names = {h.name for h in hosts}
    for n, spec in enumerate(specs, 1):
        problem = None
        if not spec.signature:
            problem = "unsigned job: submit through hq-submit"
        elif spec.cores > most_cores:
            problem = f"asks for {spec.cores} cores, but the largest host has {most_cores}"
        elif spec.gpus and spec.gpus > most_gpus:
            problem = (f"asks for {spec.gpus} GPU(s), but "
                       + (f"the most any host has is {most_gpus}" if most_gpus
                          else "no host has a GPU (gpus column of etc/cluster.tab)"))
        elif spec.memory_mb and most_memory is not None and spec.memory_mb > most_memory:
            problem = (f"asks for {spec.memory_mb} MiB, but the largest host has "
                       f"{most_memory} MiB")
        elif unknown := set(spec.excluded_hosts) - known:
            problem = f"--excludeHosts names unknown host(s): {', '.join(sorted(unknown))}"
        elif spec.constraint and not (names - cluster.lacking(spec.constraint)):
            lacking = missing(parse_constraint(spec.constraint), (h.features for h in hosts))
            problem = (f"--constraint {spec.constraint}: no host has "
                       + (f"the feature(s) {', '.join(lacking)}" if lacking
                          else "all of these features at once"))
        if problem is not None:
            where = (f"job {first + n - 1}: " if first is not None
                     else f"job {n} of {len(specs)}: " if len(specs) > 1 else "")
            raise UsageError(where + problem)


def check_quotas(server: Server, owner: str, count: int) -> None:
    """Refuse, storing nothing, a submission over the limits of etc/hq-server.cfg."""
    config = server.config
    if count > config.max_jobs_per_submission:
        raise UsageError(f"a submission may hold at most {config.max_jobs_per_submission:,} "
                         f"jobs, this one has {count:,} ([scheduler] max_jobs_per_submission)")
    queued = server.cluster.unfinished_of(owner)
    if queued + count > config.max_queued_per_user:
        raise UsageError(f"{owner} has {queued:,} unfinished jobs and may have at most "
                         f"{config.max_queued_per_user:,}, so these {count:,} do not fit "
                         "([scheduler] max_queued_per_user)")


RESERVATION_S = 600.0
MAX_RESERVATIONS = 1000   # per user, at once


def reserve(server: Server, session: Session, request: ReserveSubmission) -> ReserveReply:
    """A submission id the user-server signs its next submission's jobs for."""
    cluster, me, now = server.cluster, session.user.name, server.clock.monotonic()
    for sub_id, (_owner, expires) in list(cluster.reservations.items()):
        if expires < now:
            del cluster.reservations[sub_id]
            cluster.submission_parts.pop(sub_id, None)   # a streamed submission never closed
    if sum(1 for owner, _ in cluster.reservations.values() if owner == me) >= MAX_RESERVATIONS:
        raise Busy(f"{me} has {MAX_RESERVATIONS} submissions reserved and not submitted")
    sub_id = cluster.next_submission_id
    cluster.next_submission_id += 1
    cluster.reservations[sub_id] = (me, now + RESERVATION_S)
    return ReserveReply(submission_id=sub_id, database=cluster.database_id)


BIG_SUBMISSION = 10_000


def shared_strings(specs: list[JobSpec]) -> list[JobSpec]:
    """The specs with equal strings as one object: a jobs file repeats its command, directory,
    shell and output templates in every job, and a decoded frame has a copy of each (about
    300 bytes a job that hq-server would keep for as long as the job is unfinished)."""
    if len(specs) < 2:
        return specs
    seen: dict[str, str] = {}
    one = seen.setdefault
    replace = msgspec.structs.replace
    return [replace(spec, command=one(spec.command, spec.command), cwd=one(spec.cwd, spec.cwd),
                    shell=one(spec.shell, spec.shell), stdout=one(spec.stdout, spec.stdout),
                    stderr=one(spec.stderr, spec.stderr))
            for spec in specs]


def _reserved(server: Server, session: Session, submission_id: int) -> None:
    reserved = server.cluster.reservations.get(submission_id)
    if reserved is None or reserved[0] != session.user.name:
        raise UsageError(f"submission {submission_id} was not reserved for "
                         f"{session.user.name} (or hq-server restarted since): submit again")


def submit_part(server: Server, session: Session, request: SubmitPart) -> PartReply:
    """Some jobs of a streamed submission: checked now, kept in memory, stored with the
    rest when the closing ``Submit`` comes (or forgotten with the reservation)."""
    if request.submission_id is None:
        raise UsageError("a part of a submission needs its reserved submission id")
    _reserved(server, session, request.submission_id)
    if _array_of(request.jobs) is not None:
        raise UsageError("a whole array is not streamed in parts: it is one spec")
    parts = server.cluster.submission_parts.setdefault(request.submission_id, [])
    check_quotas(server, session.user.name, len(parts) + len(request.jobs))
    check_fits(server, request.jobs, first=len(parts) + 1)
    parts.extend(request.jobs)
    return PartReply(received=len(parts), submission_id=request.submission_id)


def _array_of(specs: list[JobSpec]) -> JobSpec | None:
    """The spec of an array signed as a whole when ``specs`` is one (it comes alone)."""
    wholes = [spec for spec in specs if spec.array_indexes is not None]
    if not wholes:
        return None
    if len(specs) > 1 or wholes[0].array_index is not None:
        raise UsageError("a spec with array_indexes is a whole array: it comes alone, "
                         "without an array_index")
    return wholes[0]


async def submit(server: Server, session: Session, request: Submit) -> SubmitReply:
    cluster, owner = server.cluster, session.user
    specs = request.jobs
    array = _array_of(specs)
    if array is not None and request.parts:
        raise UsageError("a whole array is not streamed in parts: it is one spec")
    if array is not None:
        check_fits(server, specs)   # what its elements share, once
        specs = array.elements()
    if request.parts:
        if request.submission_id is None:
            raise UsageError("a streamed submission needs its reserved submission id")
        _reserved(server, session, request.submission_id)
        received = cluster.submission_parts.get(request.submission_id, [])
        check_fits(server, specs, first=len(received) + 1)
        specs = received + specs
    check_quotas(server, session.user.name, len(specs))
    if not request.parts and array is None:
        check_fits(server, specs)
    if (request.notify or request.mail_user) and not request.notify_signature:
        raise UsageError("--notify and --mail-user need a user-server that signs them: "
                         "restart yours (hq-client status starts a new one)")
    links = await resolve_dependencies(server, session, request, specs)
    replaced = await resubmitted(server, session, request, len(specs))
    if array is None:
        specs = shared_strings(specs)
    now = server.clock.now()
    state = JobState.HELD if request.hold else JobState.PENDING
    if request.submission_id is None:   # a user-server of protocol 1: signed without one
        sub_id = cluster.next_submission_id
        cluster.next_submission_id += 1
    else:
        _reserved(server, session, request.submission_id)
        sub_id = request.submission_id
        del cluster.reservations[sub_id]
        cluster.submission_parts.pop(sub_id, None)
    first = cluster.next_job_id
    cluster.next_job_id += len(specs)
    sub = Submission(id=sub_id, owner=owner.name, environment=request.environment,
                     umask=request.umask, submitted_at=now,
                     submit_host=request.submit_host or "unknown", job_count=len(specs),
                     first_job_id=first, cap=request.array_cap,
                     array_indexes=None if array is None else array.array_indexes,
                     kill_on_invalid_dep=request.kill_on_invalid_dep, notify=request.notify,
                     mail_user=request.mail_user, mail_type=request.mail_type,
                     notify_signature=request.notify_signature)
    new = [Job(id=job_id, submission_id=sub_id, owner=owner.name, owner_id=owner.id,
               spec=spec, submitted_at=now, state=state,
               eligible_at=None if request.hold else now,
               resubmit_of=None if replaced is None else replaced[job_id - first],
               array_id=None if spec.array_index is None else first)
           for job_id, spec in enumerate(specs, first)]
    rows = [(job.id, link.on, link.kind) for job, job_links in zip(new, links, strict=True)
            for link in job_links]
    rewired = ([] if replaced is None else
               [(dependant, old, job.id) for job, old in zip(new, replaced, strict=True)
                for dependant in cluster.deps.dependants.get(old, ())])
    await server.journal.submission(sub, owner.id, new, rows, rewired)
    # the jobs named may have ended while the transaction committed: from here on (no await
    # below) memory's states decide, or a dependant would wait for an end already gone by
    links = [[dataclasses.replace(link, state=cluster.state_now(link.on, link.state))
              for link in job_links] for job_links in links]
    cluster.add_submission(sub)
    for job, job_links in zip(new, links, strict=True):
        for link in unmet(job_links):
            cluster.deps.add(job.id, link.on, link.kind)
    for job in new:
        cluster.add_job(job)
    for job, old in zip(new, replaced or (), strict=False):
        for dependant in cluster.deps.rewire(old, job.id):
            waiting = cluster.jobs.get(dependant)
            if waiting is not None and waiting.reason is not None:
                server.journal.reason(waiting, None)   # no longer doomed: waits for this one
    server.journal.doomed([(job, link.on, link.state)
                           for job, job_links in zip(new, links, strict=True)
                           for link in never_met(job_links)[:1]])
    if len(new) >= BIG_SUBMISSION:
        # once the decoded frames and their copies are gone (after this answer), their
        # memory goes back to the system
        asyncio.get_running_loop().call_later(1.0, release_free_memory)
    server.dispatcher.wake()
    return SubmitReply(ids=[j.id for j in new], submission_id=sub_id)


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
    for members in elements.values():
        members.reverse()   # in id order
        if len(members) > 1:
            if first_page:
                arrays.append(array_line(server, members))
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


def _results(order: Iterable[int], results: dict[int, str]) -> ChangesReply:
    return ChangesReply(results=[ChangeResult(i, results.get(i, "not found"))
                                 for i in dict.fromkeys(order)])


def cancel(server: Server, session: Session, request: Cancel) -> ChangesReply:
    mine, _missing = _own_jobs(server, session, request.ids)
    return _results(request.ids, server.dispatcher.cancel(mine, by=session.user.name))


def _hold_or_release(server: Server, session: Session, ids: list[int],
                     hold: bool) -> ChangesReply:
    source, target = ((JobState.PENDING, JobState.HELD) if hold
                      else (JobState.HELD, JobState.PENDING))
    results: dict[int, str] = {}
    mine, _missing = _own_jobs(server, session, ids)
    withdrawing = []
    for job in mine:
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
    return _results(ids, results)


def hold(server: Server, session: Session, request: Hold) -> ChangesReply:
    return _hold_or_release(server, session, request.ids, hold=True)


def release(server: Server, session: Session, request: Release) -> ChangesReply:
    return _hold_or_release(server, session, request.ids, hold=False)


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


USER_REQUESTS: dict[type, Handler] = {
    Ping: ping, ReserveSubmission: reserve, Submit: submit, SubmitPart: submit_part,
    Status: status, Jobs: jobs, Show: show, Cancel: cancel, Hold: hold, Release: release,
    Wait: wait, UpdateArray: update_array, JobSpecs: job_specs, Watch: watch,
}

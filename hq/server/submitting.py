"""A submission's way into hq-server: reserving its id, its streamed parts, and storing it.

The request arrives decoded and checked (``hq.protocol.messages``); here it is checked against
what this cluster and the caller's quotas allow, its dependencies are resolved, and it is
stored all or nothing, in one transaction, before it is acknowledged. An array signed as a
whole (one spec with ``array_indexes``) is laid out into its elements here; a big one only
its first elements, the rest after the answer (``hq.server.layout``).
"""

from __future__ import annotations

import asyncio
import dataclasses

import msgspec

from hq import array_indexes
from hq.constraints import missing
from hq.constraints import parse as parse_constraint
from hq.errors import Busy, UsageError
from hq.job import Job, Submission
from hq.jobspec import JobSpec
from hq.protocol.messages import (
    PartReply,
    ReserveReply,
    ReserveSubmission,
    Submit,
    SubmitPart,
    SubmitReply,
)
from hq.server.core import Server, Session
from hq.server.layout import LAID_OUT_AT_SUBMIT, Layout
from hq.server.memory import release_free_memory
from hq.server.workflows import never_met, resolve_dependencies, resubmitted, unmet
from hq.states import JobState


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
    if len(specs) == 1:
        return specs[0] if specs[0].array_indexes is not None else None
    if any(spec.array_indexes is not None for spec in specs):
        raise UsageError("a spec with array_indexes is a whole array: it comes alone")
    return None


async def submit(server: Server, session: Session, request: Submit) -> SubmitReply:
    cluster, owner = server.cluster, session.user
    if request.dependencies or request.resubmit_of is not None:
        # the jobs they name are all stored (and so are the ones a resubmit replaces)
        await server.layouts.settled(owner.name)
    specs = request.jobs
    array = _array_of(specs)
    if array is not None and request.parts:
        raise UsageError("a whole array is not streamed in parts: it is one spec")
    if request.parts:
        if request.submission_id is None:
            raise UsageError("a streamed submission needs its reserved submission id")
        _reserved(server, session, request.submission_id)
        received = cluster.submission_parts.get(request.submission_id, [])
        check_fits(server, specs, first=len(received) + 1)
        specs = received + specs
    check_quotas(server, session.user.name, request.job_count() if array else len(specs))
    if not request.parts:
        check_fits(server, specs)   # a whole array: its one spec, which its elements share
    indexes: list[int] = []
    if array is not None:
        indexes = array_indexes.expand(array.array_indexes or "")
        # a big array is accepted with its first elements, the rest laid out after the
        # answer (hq.server.layout); one with dependencies is laid out whole, as they are
        big = len(indexes) > LAID_OUT_AT_SUBMIT and not request.dependencies
        specs = array.elements(indexes[:LAID_OUT_AT_SUBMIT] if big else indexes)
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
    count = len(indexes) if array is not None else len(specs)
    first = cluster.next_job_id
    cluster.next_job_id += count
    sub = Submission(id=sub_id, owner=owner.name, environment=request.environment,
                     umask=request.umask, submitted_at=now,
                     submit_host=request.submit_host or "unknown", job_count=count,
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
    if array is not None and len(new) < count:
        server.layouts.start(Layout(sub=sub, owner_id=owner.id, template=array,
                                    indexes=indexes, laid_out=len(new), state=state))
    for job, old in zip(new, replaced or (), strict=False):
        for dependant in cluster.deps.rewire(old, job.id):
            waiting = cluster.jobs.get(dependant)
            if waiting is not None and waiting.reason is not None:
                server.journal.reason(waiting, None)   # no longer doomed: waits for this one
    server.journal.doomed([(job, link.on, link.state)
                           for job, job_links in zip(new, links, strict=True)
                           for link in never_met(job_links)[:1]])
    if count >= BIG_SUBMISSION:
        # once the decoded frames and their copies are gone (after this answer), their
        # memory goes back to the system
        asyncio.get_running_loop().call_later(1.0, release_free_memory)
    server.dispatcher.wake()
    return SubmitReply(ids=list(range(first, first + count)), submission_id=sub_id)

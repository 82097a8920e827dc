"""What a submission says beyond its jobs: the jobs it waits for (``--dependency``), the jobs
it runs again (``hq-client resubmit``), later changes to an array (``update --cap``), its
counts by state (``progress``) and its elements by index (``42_7``).

Only the caller's own jobs can be named: another user's job is "not found", exactly like one
that does not exist, and nothing of the submission is stored. The database answers for jobs
hq-server no longer holds; for the rest, memory (which may be ahead of the database) wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from hq.db.dependencies import Target, array_elements, find_targets
from hq.db.jobs import element_ids, find_job, submission_environments
from hq.errors import NotFound, UsageError
from hq.job import Job
from hq.jobspec import JobSpec
from hq.protocol.messages import (
    ArrayCounts,
    ArrayCountsReply,
    ArrayElements,
    ArrayElementsReply,
    DependencyRef,
    JobSpecs,
    JobSpecsReply,
    RunJob,
    SubmissionEnv,
    Submit,
    UpdateArray,
    UpdateArrayReply,
)
from hq.server.core import Server, Session
from hq.server.dependencies import verdict
from hq.states import DependencyKind, JobState

# Pairs (new job, job it waits for) one submission may make: an array after an array is
# one pair per element of each.
MAX_DEPENDENCY_PAIRS = 1_000_000


@dataclass(frozen=True, slots=True)
class Link:
    """A new job waits for job ``on``, which is in ``state`` now."""

    on: int
    kind: DependencyKind
    state: JobState


@dataclass(slots=True)
class _Found:
    targets: dict[int, Target]
    elements: dict[int, dict[int, tuple[int, JobState]]]   # submission -> index -> (id, state)
    members: dict[int, Target]                              # elements of whole arrays


def _is_array_head(target: Target) -> bool:
    return target.array_index is not None and target.id == target.first_job_id


async def resolve_dependencies(server: Server, session: Session, request: Submit,
                               specs: Sequence[JobSpec]) -> list[list[Link]]:
    """For each of ``specs``, the jobs it waits for. NotFound for a job that is not the
    caller's; UsageError for a dependency that cannot be made."""
    refs = request.dependencies
    if not refs:
        return [[] for _ in specs]
    owner_id = session.user.id
    ids = {ref.id for ref in refs}

    def read(conn: sa.Connection) -> _Found:
        targets = find_targets(conn, owner_id, ids)
        elements: dict[int, dict[int, tuple[int, JobState]]] = {}
        members: dict[int, Target] = {}
        for ref in refs:
            target = targets.get(ref.id)
            if target is None:
                continue
            wants_elements = ref.index is not None or ref.kind == "aftercorr"
            if wants_elements and target.submission_id not in elements:
                elements[target.submission_id] = array_elements(conn, target.submission_id)
            elif not wants_elements and _is_array_head(target):
                first = target.first_job_id or target.id
                members.update(find_targets(conn, owner_id,
                                            range(first, first + target.job_count)))
        return _Found(targets, elements, members)

    found = await server.store.read(read, what="the jobs named by --dependency")
    missing = sorted(ids - found.targets.keys())
    if missing:
        raise NotFound(f"--dependency: no such job: {', '.join(map(str, missing))}")
    links: list[list[Link]] = [[] for _ in specs]
    common: list[Link] = []
    pairs = 0
    for ref in refs:
        target = found.targets[ref.id]
        if ref.kind == "aftercorr":
            pairs += _correlate(server, ref, target, found, specs, links)
            continue
        kind = DependencyKind(ref.kind)
        for job_id, recorded in _named_jobs(ref, target, found):
            common.append(Link(job_id, kind, _state(server, job_id, recorded)))
    pairs += len(common) * len(specs)
    if pairs > MAX_DEPENDENCY_PAIRS:
        raise UsageError(f"--dependency makes {pairs:,} pairs of jobs, more than "
                         f"{MAX_DEPENDENCY_PAIRS:,}: name fewer jobs or split the submission")
    for job_links in links:
        job_links[:0] = common
    return links


def _named_jobs(ref: DependencyRef, target: Target, found: _Found
                ) -> list[tuple[int, JobState]]:
    """The jobs ``ref`` names, with their recorded states."""
    if ref.index is not None:
        element = found.elements.get(target.submission_id, {}).get(ref.index)
        if target.array_index is None or element is None:
            raise NotFound(f"--dependency: job {ref.id} has no array element {ref.index}")
        return [element]
    if _is_array_head(target):   # an array's id names the whole array
        first = target.first_job_id or target.id
        return [(i, found.members[i].state) for i in range(first, first + target.job_count)
                if i in found.members]
    return [(target.id, target.state)]


def _correlate(server: Server, ref: DependencyRef, target: Target, found: _Found,
               specs: Sequence[JobSpec], links: list[list[Link]]) -> int:
    """aftercorr: element i of the new array after element i of ``target``'s array (an
    index the other array lacks waits for nothing, as in Slurm)."""
    if target.array_index is None:
        raise UsageError(f"--dependency aftercorr:{ref.id}: job {ref.id} is not an array")
    if any(spec.array_index is None for spec in specs):
        raise UsageError("--dependency aftercorr needs an array (--array or -f)")
    elements = found.elements.get(target.submission_id, {})
    made = 0
    for spec, job_links in zip(specs, links, strict=True):
        element = elements.get(spec.array_index)  # type: ignore[arg-type]
        if element is not None:
            job_links.append(Link(element[0], DependencyKind.AFTEROK,
                                  _state(server, *element)))
            made += 1
    return made


def _state(server: Server, job_id: int, recorded: JobState) -> JobState:
    return server.cluster.state_now(job_id, recorded)


def unmet(links: list[Link]) -> list[Link]:
    return [link for link in links if verdict(link.kind, link.state) is None]


def never_met(links: list[Link]) -> list[Link]:
    return [link for link in links if verdict(link.kind, link.state) is False]


async def resubmitted(server: Server, session: Session, request: Submit, count: int
                      ) -> list[int] | None:
    """The old job each new job runs again (a resubmission), all the caller's own."""
    old = request.resubmit_of
    if old is None:
        return None
    if len(old) != count:
        raise UsageError(f"a resubmission names {len(old):,} old jobs for {count:,} new ones")
    owner_id = session.user.id
    found = await server.store.read(lambda conn: find_targets(conn, owner_id, old),
                                    what="the jobs resubmitted")
    missing = sorted(set(old) - found.keys())
    if missing:
        raise NotFound(f"resubmit: no such job: {', '.join(map(str, missing[:10]))}")
    return list(old)


async def job_specs(server: Server, session: Session, request: JobSpecs) -> JobSpecsReply:
    """The stored specs of the caller's jobs ``ids``, with their submissions' environments."""
    cluster, me = server.cluster, session.user.name
    held = {i: job for i in request.ids if (job := cluster.own_job(me, i)) is not None}
    others = [i for i in request.ids if i not in held]

    def read(conn: sa.Connection) -> tuple[list[Job], dict[int, tuple[dict[str, str], int]]]:
        found = [job for i in others if (job := find_job(conn, i)) is not None
                 and job.owner == me]
        wanted = {job.submission_id for job in [*held.values(), *found]}
        return found, submission_environments(conn, wanted)

    found, environments = await server.store.read(read, what="the specs of jobs")
    mine = sorted([*held.values(), *found], key=lambda job: job.id)
    missing = sorted(set(request.ids) - {job.id for job in mine})
    if missing:
        raise NotFound(f"no such job: {', '.join(map(str, missing[:10]))}")
    return JobSpecsReply(
        jobs=[RunJob(job.id, job.submission_id, job.spec, job.attempt, job.array_id)
              for job in mine],
        submissions={str(sub): SubmissionEnv(environment=env, umask=umask)
                     for sub, (env, umask) in environments.items()},
        database=cluster.database_id)


# --- arrays -------------------------------------------------------------------------------------

def update_array(server: Server, session: Session, request: UpdateArray) -> UpdateArrayReply:
    """``hq-client update ARRAY --cap N``: the array's cap, now and after a restart."""
    cluster = server.cluster
    head = cluster.own_job(session.user.name, request.array)
    sub = None if head is None else cluster.submissions.get(head.submission_id)
    if head is None or sub is None or sub.first_job_id != head.id \
            or head.spec.array_index is None:
        raise NotFound(f"no unfinished array {request.array} of {session.user.name}")
    cap = request.cap or None
    cluster.set_cap(sub, cap)
    server.journal.array_cap(sub)
    server.dispatcher.wake()
    return UpdateArrayReply(array_id=head.id, cap=cap)


async def array_counts(server: Server, session: Session, request: ArrayCounts
                       ) -> ArrayCountsReply:
    """``hq-client progress ARRAY``: its jobs by state. While some of its jobs are
    unfinished, memory counts all of them (``Submission.unfinished`` and ``.finished``);
    once all have ended (a cancelled one not stored yet has not), the database does, after
    everything recorded so far committed."""
    head = await server.own_array(session.user.name, request.array)
    sub = server.cluster.submissions.get(head.submission_id)
    if sub is not None:
        return ArrayCountsReply(array_id=head.id, jobs=sub.job_count,
                                counts={**+sub.finished, **+sub.unfinished})
    counts = await server.ended_counts(head.submission_id)
    return ArrayCountsReply(array_id=head.id, jobs=sum(counts.values()), counts=counts,
                            ended=True)


async def find_elements(server: Server, session: Session, request: ArrayElements
                         ) -> ArrayElementsReply:
    """``hq-client show 42_7``: the job ids of an array's elements by index, from the
    database for those stored and by position for those an array still being laid out has
    not stored yet; the indexes it does not have are left out."""
    head = await server.own_array(session.user.name, request.array)
    wanted = list(dict.fromkeys(request.indexes))
    found = await server.store.read(
        lambda conn: element_ids(conn, head.submission_id, wanted),
        what=f"elements of array {head.id}")
    layout = server.layouts.running.get(head.submission_id)
    missing = {index for index in wanted if index not in found}
    if layout is not None and missing:   # one pass over the rest, nothing built per element
        for position in range(layout.laid_out, len(layout.indexes)):
            if layout.indexes[position] in missing:
                found[layout.indexes[position]] = head.id + position
                missing.discard(layout.indexes[position])
                if not missing:
                    break
    indexes = [index for index in wanted if index in found]
    return ArrayElementsReply(array_id=head.id, indexes=indexes,
                              ids=[found[index] for index in indexes])

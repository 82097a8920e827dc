"""What a user may change of their jobs: cancel, hold and release, job by job (``ids``) or
whole arrays (``arrays``: ``hq-client cancel 42_*``).

A job named by id must be stored, so such a request first waits until the caller's arrays
are all laid out (``hq.server.layout``). A whole array does not wait:
hq-server finds its jobs in memory, changes the ones stored, and the ones not stored yet
are stored in their new state (``Layouts.change_tail``). The answer counts the array's
jobs by result, so that a million jobs are one line. A request naming anything that is not
an array of the caller's is "not found" before anything changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hq.job import Job
from hq.protocol.messages import ArrayChanges, Cancel, ChangeResult, ChangesReply, Hold, Release
from hq.server.core import Server, Session
from hq.server.layout import Layout
from hq.states import JobState

JobChange = Callable[[Iterable[Job]], dict[int, str]]
TailChange = Callable[[Layout], dict[str, int]]


@dataclass(frozen=True, slots=True)
class WholeArray:
    """An array named whole by a change: its stored unfinished jobs, its finished ones
    counted, and its layout while some of its jobs are not stored yet."""

    id: int
    unfinished: list[Job]
    finished: dict[JobState, int]
    layout: Layout | None


async def whole_arrays(server: Server, session: Session, arrays: Iterable[int]
                       ) -> list[WholeArray]:
    """The caller's ``arrays``, each found whole: a pass over the caller's unfinished jobs,
    and the database only for an array whose jobs have all finished. NotFound names the
    first id that is not an array of the caller's, before anything is changed."""
    me, cluster = session.user.name, server.cluster
    heads = [await server.own_array(me, array) for array in dict.fromkeys(arrays)]
    recorded: dict[int, dict[JobState, int]] = {}
    while gone := [h.submission_id for h in heads if h.submission_id not in cluster.submissions
                   and h.submission_id not in recorded]:
        for sub_id in gone:   # all its jobs ended: the database counts them
            recorded[sub_id] = await server.ended_counts(sub_id)
    # no await from here on: what is found is what the change sees
    members: dict[int, list[Job]] = {head.submission_id: [] for head in heads}
    for job in cluster.unfinished_by_owner.get(me, {}).values():
        if job.submission_id in members:
            members[job.submission_id].append(job)
    found = []
    for head in heads:
        sub = cluster.submissions.get(head.submission_id)
        layout = server.layouts.running.get(head.submission_id)
        finished = Counter(recorded.get(head.submission_id, {}) if sub is None else sub.finished)
        if layout is not None and layout.state.finished:
            finished[layout.state] -= layout.tail   # counted as the tail's, below
        found.append(WholeArray(head.id, members[head.submission_id], dict(+finished), layout))
    return found


def changing(handler: Callable[..., ChangesReply]) -> Callable[..., Any]:
    """``handler`` once the jobs its request names by id are stored, given the whole arrays
    it names (``WholeArray``)."""
    async def change(server: Server, session: Session, request: Any) -> ChangesReply:
        if request.ids:
            # all the caller's arrays stored, not only these jobs: a restart reads what a
            # layout's missing jobs are from its last stored one (``Layouts.resume``), so
            # no job may be changed by itself while an array of its owner is laid out
            await server.layouts.settled(session.user.name)
        arrays = await whole_arrays(server, session, request.arrays) if request.arrays else []
        return handler(server, session, request, arrays)
    return change


def _own_jobs(server: Server, session: Session, ids: Iterable[int]) -> list[Job]:
    found = (server.cluster.own_job(session.user.name, job_id) for job_id in dict.fromkeys(ids))
    return [job for job in found if job is not None]


def _change(server: Server, session: Session, request: Cancel | Hold | Release,
            arrays: Sequence[WholeArray], change: JobChange, tail: TailChange,
            ended: str) -> ChangesReply:
    """Apply ``change`` to the jobs named by id and to the stored jobs of each whole array,
    ``tail`` to the array's jobs not stored yet; ``ended`` says what its finished jobs got
    (``already {state}``)."""
    results = change(_own_jobs(server, session, request.ids))
    counted = []
    for array in arrays:
        tally = Counter(change(array.unfinished).values())
        if array.layout is not None:
            tally.update(tail(array.layout))
        for state, n in array.finished.items():
            tally[ended.format(state=state)] += n
        counted.append(ArrayChanges(array.id, dict(tally)))
    return ChangesReply(results=[ChangeResult(i, results.get(i, "not found"))
                                 for i in dict.fromkeys(request.ids)], arrays=counted)


def _tail(server: Server, layout: Layout, source: JobState, target: JobState, done: str,
          refused: str, reason: str | None = None) -> dict[str, int]:
    if layout.state is not source:
        return {refused.format(state=layout.state): layout.tail}
    return {done: server.layouts.change_tail(layout, target, reason)}


def cancel(server: Server, session: Session, request: Cancel,
           arrays: Sequence[WholeArray] = ()) -> ChangesReply:
    me = session.user.name

    def tail(layout: Layout) -> dict[str, int]:
        if layout.state.finished:
            return {f"already {layout.state}": layout.tail}
        return _tail(server, layout, layout.state, JobState.CANCELLED, "cancelled", "",
                     reason=f"cancelled by {me}")

    return _change(server, session, request, arrays,
                   lambda jobs: server.dispatcher.cancel(jobs, by=me), tail, "already {state}")


def hold(server: Server, session: Session, request: Hold,
         arrays: Sequence[WholeArray] = ()) -> ChangesReply:
    return _holding(server, session, request, arrays, hold=True)


def release(server: Server, session: Session, request: Release,
            arrays: Sequence[WholeArray] = ()) -> ChangesReply:
    return _holding(server, session, request, arrays, hold=False)


def _holding(server: Server, session: Session, request: Hold | Release,
             arrays: Sequence[WholeArray], *, hold: bool) -> ChangesReply:
    source, target = ((JobState.PENDING, JobState.HELD) if hold
                      else (JobState.HELD, JobState.PENDING))
    done, refused = ("held", "not pending ({state})") if hold else ("released",
                                                                    "not held ({state})")
    return _change(server, session, request, arrays,
                   lambda jobs: _hold_or_release(server, jobs, hold=hold),
                   lambda layout: _tail(server, layout, source, target, done, refused),
                   refused)


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

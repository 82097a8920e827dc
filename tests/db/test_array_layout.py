"""A big array is accepted with its first elements stored, and the rest are stored after the
answer (``hq.server.layout``). Runs on both backends.

From the answer on, hq-server counts the array whole: status, quotas and the folded
listing. Once the layout is done, the database holds every element. A request that names an
element not stored yet waits until it is stored. If hq-server stops half way, the next
start stores the rest, in the state the first elements were given, and no job id of the
array is handed to anyone else.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from fixtures.server_core import Core, core_on

from hq.db.jobs import unnotified_submissions
from hq.db.model import jobs, submissions
from hq.errors import NotFound, UsageError
from hq.jobspec import JobSpec
from hq.protocol.messages import (
    ArrayCounts,
    ArrayElements,
    Cancel,
    Hold,
    JobEnded,
    JobEvents,
    Jobs,
    JobSpecs,
    JobStarted,
    Release,
    Run,
    Show,
    Status,
    SubmissionEnded,
    Submit,
)
from hq.server import layout, requests, submitting, workflows
from hq.states import JobState

pytestmark = pytest.mark.timeout(60)

UNFINISHED = [JobState.PENDING, JobState.HELD, JobState.DISPATCHED, JobState.RUNNING]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """10 elements stored with the submission, then 7 a transaction: a 50-element array
    is laid out in 6 more transactions."""
    monkeypatch.setattr(submitting, "LAID_OUT_AT_SUBMIT", 10)
    monkeypatch.setattr(layout, "CHUNK", 7)


def run(db_config, tmp_path, body, hosts: dict[str, int] | None = None, **config) -> None:
    async def main() -> None:
        async with core_on(tmp_path, hosts=hosts or {"n1": 2}, users=["alice", "bob"],
                           db=db_config, **config) as core:
            await core.user_server("alice")
            await body(core)
    asyncio.run(main())


async def submit_array(core: Core, indexes: str, **request) -> list[int]:
    array = JobSpec(command="sim", cwd="/tmp", signature="signed-by-test",
                    array_indexes=indexes, name="scan")
    reply = await requests.submit(core.server, core.session("alice"), Submit(
        jobs=[array], environment={"PATH": "/bin"}, umask=0o022, **request))
    return reply.ids


def stored(core: Core, first: int) -> list[sa.Row]:
    return core.rows(sa.select(jobs.c.id, jobs.c.state, jobs.c.array_index)
                     .where(jobs.c.id >= first).order_by(jobs.c.id))


def test_a_big_array_is_counted_whole_at_once_and_stored_whole_after(db_config, tmp_path):
    async def body(core: Core) -> None:
        alice = core.session("alice")
        ids = await submit_array(core, "1-99:2", hold=True)
        assert ids == list(range(ids[0], ids[0] + 50))
        assert len(stored(core, ids[0])) == 10    # the answer came with 10 stored ...
        # ... and all 50 count as the user's
        assert requests.status(core.server, alice, Status()).mine == {"held": 50}
        reply = await requests.jobs(core.server, alice, Jobs(states=UNFINISHED, fold=True))
        (line,) = reply.arrays
        assert (line.id, line.indexes, line.counts) == (
            ids[0], ",".join(map(str, range(1, 100, 2))), {JobState.HELD: 50})
        # a request that names the last element waits until it is stored
        handler = requests.USER_REQUESTS[Release]
        reply = await handler(core.server, alice, Release(ids=[ids[-1]]))
        assert [r.result for r in reply.results] == ["released"]
        assert not core.server.layouts.running
        await core.committed()
        rows = stored(core, ids[0])
        assert [r.id for r in rows] == ids
        assert [r.array_index for r in rows] == list(range(1, 100, 2))
        assert [r.state for r in rows] == [JobState.HELD] * 49 + [JobState.PENDING]
        assert requests.status(core.server, alice, Status()).mine == {"held": 49, "pending": 1}
    run(db_config, tmp_path, body)


def test_the_elements_not_stored_yet_count_against_the_quota(db_config, tmp_path):
    async def body(core: Core) -> None:
        await submit_array(core, "1-50")
        with pytest.raises(UsageError, match="has 50 unfinished jobs and may have at most 60"):
            await submit_array(core, "1-11")
    run(db_config, tmp_path, body, max_queued_per_user=60)


def test_an_array_half_laid_out_is_laid_out_after_a_restart(db_config, tmp_path):
    async def body(core: Core) -> None:
        ids = await submit_array(core, "1-50", hold=True, notify="echo done",
                                 notify_signature="signed-by-test")
        core.server.layouts.stop()   # hq-server stops before the next transaction
        await asyncio.sleep(0)
        await core.committed()
        assert len(stored(core, ids[0])) == 10
        await core.restart()
        server = core.server
        assert server.cluster.next_job_id == ids[-1] + 1   # the array's ids stay its own
        assert server.cluster.unfinished_of("alice") == 50
        await server.layouts.settled("alice")
        await core.committed()
        rows = stored(core, ids[0])
        assert [(r.id, r.array_index) for r in rows] == list(zip(ids, range(1, 51), strict=True))
        assert {r.state for r in rows} == {JobState.HELD}      # as its first elements
        sub = server.cluster.submissions[server.cluster.jobs[ids[0]].submission_id]
        assert sub.job_count == 50
        # a new submission gets the next ids
        (single,) = await core.submit("alice", "true")
        assert single == ids[-1] + 1
    run(db_config, tmp_path, body)


def test_an_array_whose_stored_elements_ended_has_not_ended_until_laid_out(db_config,
                                                                          tmp_path):
    """The end of an array is told once its last element ends: not when the part stored
    so far did, before a restart laid out the rest."""
    async def body(core: Core) -> None:
        ids = await submit_array(core, "1-50", notify="echo done",
                                 notify_signature="signed-by-test")
        core.server.layouts.stop()
        await asyncio.sleep(0)
        await core.committed()
        with core.engine.begin() as conn:   # the stored ten ran (hq-server had stopped)
            conn.execute(sa.update(jobs).where(jobs.c.id.in_(ids[:10]))
                         .values(state=JobState.DONE, started_at=core.clock.now(),
                                 ended_at=core.clock.now(), exit_code=0))
        with core.engine.connect() as conn:
            assert unnotified_submissions(conn) == []
            sub_id = conn.execute(sa.select(submissions.c.id)
                                  .where(submissions.c.first_job_id == ids[0])).scalar()
        await core.restart()
        cluster = core.server.cluster
        assert sub_id in cluster.submissions and cluster.unfinished_of("alice") == 40
        await core.server.layouts.settled(None)
        assert cluster.unfinished_by_submission[sub_id] == 40
        assert cluster.counts[("alice", JobState.PENDING)] == 40
        counted = await workflows.array_counts(core.server, core.session("alice"),
                                               ArrayCounts(array=ids[0]))
        assert (counted.jobs, counted.counts) == (
            50, {JobState.DONE: 10, JobState.PENDING: 40})
    run(db_config, tmp_path, body)


def test_an_arrays_counts_are_right_while_it_is_stored_runs_and_after_a_restart(db_config,
                                                                                tmp_path):
    """``hq-client progress`` asks for counts: every element is counted from the answer on
    (those not stored yet too), finished ones as the database has them, and the counts
    agree with the array listed job by job, before and after a restart."""
    async def body(core: Core) -> None:
        alice = core.session("alice")

        async def counts(array: int) -> tuple[int, dict[str, int]]:
            reply = await workflows.array_counts(core.server, alice, ArrayCounts(array=array))
            return reply.jobs, {str(s): n for s, n in reply.counts.items()}

        async def listed(array: int) -> dict[str, int]:
            reply = await requests.jobs(core.server, alice, Jobs(array=array))
            found: dict[str, int] = {}
            for job in reply.jobs:
                found[str(job.state)] = found.get(str(job.state), 0) + 1
            return found

        ids = await submit_array(core, "1-50")
        assert len(stored(core, ids[0])) < 50
        assert await counts(ids[0]) == (50, {"pending": 50})
        await core.server.layouts.settled("alice")
        assert core.server.dispatcher.round() == 2      # two slots on n1
        run_ = await core.peers["alice"].next(Run)
        link, at = core.peers["alice"].link, core.clock.now().timestamp()
        first, second = (job.id for job in run_.jobs)
        core.server.dispatcher.on_job_events(link, JobEvents(host="n1", events=[
            JobStarted(id=first, pid=11, at=at), JobEnded(id=first, at=at, pid=11, exit_code=0),
            JobStarted(id=second, pid=12, at=at)]))
        requests.cancel(core.server, alice, Cancel(ids=ids[40:]))
        want = {"done": 1, "running": 1, "pending": 38, "cancelled": 10}
        assert await counts(ids[0]) == (50, want)       # not committed yet: counted all the same
        assert await listed(ids[0]) == want
        await core.restart()
        alice = core.session("alice")
        assert await counts(ids[0]) == (50, want)
        await core.user_server("alice")
        core.server.dispatcher.on_job_events(core.peers["alice"].link, JobEvents(
            host="n1", events=[JobEnded(id=second, at=at, pid=12, exit_code=3)]))
        requests.cancel(core.server, alice, Cancel(ids=ids[2:40]))
        assert await counts(ids[0]) == (50, {"done": 1, "failed": 1, "cancelled": 48})
        assert await counts(ids[0]) == (50, await listed(ids[0]))
        with pytest.raises(NotFound, match=f"no such array: {ids[0]}"):   # not bob's
            await workflows.array_counts(core.server, core.session("bob"),
                                         ArrayCounts(array=ids[0]))
        with pytest.raises(NotFound, match=f"no such array: {ids[1]}"):   # an element
            await workflows.array_counts(core.server, alice, ArrayCounts(array=ids[1]))
    run(db_config, tmp_path, body)


def reasons(ids: list[int]) -> sa.Select:
    return sa.select(jobs.c.state, jobs.c.state_reason.label("reason")).where(jobs.c.id.in_(ids))


async def change(core: Core, request):
    return await requests.USER_REQUESTS[type(request)](core.server, core.session("alice"),
                                                       request)


@pytest.mark.parametrize("in_flight", [False, True], ids=["before-a-chunk", "mid-chunk"])
def test_a_whole_array_cancelled_while_laid_out_is_stored_cancelled(db_config, tmp_path,
                                                                    in_flight):
    """``hq-client cancel 42_*`` right after a big submit does not wait for the layout:
    the stored elements are cancelled, the rest are stored cancelled, and the array ends
    (its owner told once) only when the last of them is stored."""
    async def body(core: Core) -> None:
        peer = core.peers["alice"]
        ids = await submit_array(core, "1-50", notify="echo done",
                                 notify_signature="signed-by-test")
        if in_flight:   # the layout has a chunk on its way to the database
            await asyncio.sleep(0)
            assert core.server.layouts.running
        reply = await change(core, Cancel(arrays=[ids[0]]))
        assert [(a.id, a.results) for a in reply.arrays] == [(ids[0], {"cancelled": 50})]
        assert requests.status(core.server, core.session("alice"), Status()).mine == {
            "cancelled": 50}
        assert core.server.cluster.unfinished_of("alice") == 0
        again = await change(core, Cancel(arrays=[ids[0]]))
        assert again.arrays[0].results == {"already cancelled": 50}
        await core.committed()   # the chunk that was on its way is stored, and cancelled
        await asyncio.sleep(0)
        assert core.server.layouts.running   # the rest are still being stored
        counted = await workflows.array_counts(core.server, core.session("alice"),
                                               ArrayCounts(array=ids[0]))
        assert (counted.jobs, counted.counts) == (50, {JobState.CANCELLED: 50})
        assert not counted.ended   # hq-client progress waits on
        await core.server.layouts.settled("alice")
        await core.committed()
        assert {(r.state, r.reason) for r in core.rows(reasons(ids))} == {
            (JobState.CANCELLED, "cancelled by alice")}
        assert len(stored(core, ids[0])) == 50
        counted = await workflows.array_counts(core.server, core.session("alice"),
                                               ArrayCounts(array=ids[0]))
        assert (counted.jobs, counted.counts) == (50, {JobState.CANCELLED: 50})
        assert counted.ended
        assert requests.status(core.server, core.session("alice"), Status()).mine == {
            "cancelled": 50}
        told = await peer.next(SubmissionEnded)
        assert (told.array_id, told.counts) == (ids[0], {"cancelled": 50})
        assert ids[0] not in core.server.cluster.submissions
    run(db_config, tmp_path, body)


def test_a_whole_array_held_and_released_while_laid_out_ends_up_queued(db_config, tmp_path):
    async def body(core: Core) -> None:
        ids = await submit_array(core, "1-50")
        await asyncio.sleep(0)
        held = await change(core, Hold(arrays=[ids[0]]))
        assert held.arrays[0].results == {"held": 50}
        await asyncio.sleep(0)   # another chunk on its way, written pending, now held
        assert (await change(core, Hold(arrays=[ids[0]]))).arrays[0].results == {
            "not pending (held)": 50}
        assert core.server.dispatcher.round() == 0
        await core.committed()
        released = await change(core, Release(arrays=[ids[0]]))
        assert released.arrays[0].results == {"released": 50}
        await core.server.layouts.settled("alice")
        await core.committed()
        assert {r.state for r in stored(core, ids[0])} == {JobState.PENDING}
        assert len(stored(core, ids[0])) == 50
        assert requests.status(core.server, core.session("alice"), Status()).mine == {
            "pending": 50}
        assert core.server.dispatcher.round() == 2
    run(db_config, tmp_path, body)


def test_an_array_cancelled_while_laid_out_is_laid_out_cancelled_after_a_restart(db_config,
                                                                                 tmp_path):
    async def body(core: Core) -> None:
        ids = await submit_array(core, "1-50")
        await change(core, Cancel(arrays=[ids[0]]))
        core.server.layouts.stop()   # hq-server stops before the rest is stored
        await asyncio.sleep(0)
        await core.committed()
        assert len(stored(core, ids[0])) < 50
        await core.restart()
        assert core.server.cluster.unfinished_of("alice") == 0
        await core.server.layouts.settled("alice")
        await core.committed()
        rows = core.rows(reasons(ids))
        assert len(rows) == 50
        assert {(r.state, r.reason) for r in rows} == {(JobState.CANCELLED,
                                                        "cancelled by alice")}
        assert not core.server.cluster.submissions
    run(db_config, tmp_path, body)


def test_looking_at_a_stored_element_does_not_wait_for_the_rest(db_config, tmp_path):
    """``hq-client show 42_3`` right after a big submit answers at once; the last element
    is answered once it is stored. Changes by id still wait for the whole layout (a
    restart infers the missing elements' state from the stored ones)."""
    async def body(core: Core) -> None:
        ids = await submit_array(core, "1-50", hold=True)
        layouts = core.server.layouts
        shown = await change(core, Show(id=ids[3]))
        assert shown.job.array_index == 4 and layouts.running
        specs = await change(core, JobSpecs(ids=ids[:3]))   # what a resubmit fetches
        assert [j.id for j in specs.jobs] == ids[:3] and layouts.running
        last = await change(core, Show(id=ids[-1]))
        assert last.job.array_index == 50 and not layouts.running
        ids = await submit_array(core, "1-50", hold=True)
        assert layouts.running
        released = await change(core, Release(ids=[ids[3]]))
        assert released.results[0].result == "released" and not layouts.running
    run(db_config, tmp_path, body)


def test_elements_are_found_by_index_stored_or_not(db_config, tmp_path):
    """``42_7`` is looked up, not listed: an element stored or still to be stored has its
    id, an index the array lacks is left out, and another user's array is not found."""
    async def body(core: Core) -> None:
        ids = await submit_array(core, "1-99:2", hold=True)   # indexes 1, 3, ... 99
        assert core.server.layouts.running
        found = await change(core, ArrayElements(array=ids[0], indexes=[99, 2, 5, 1]))
        assert (found.indexes, found.ids) == ([99, 5, 1], [ids[-1], ids[2], ids[0]])
        await core.server.layouts.settled("alice")
        again = await change(core, ArrayElements(array=ids[0], indexes=[99, 5]))
        assert again.ids == [ids[-1], ids[2]]
        with pytest.raises(NotFound, match=f"no such array: {ids[0]}"):
            await requests.USER_REQUESTS[ArrayElements](
                core.server, core.session("bob"), ArrayElements(array=ids[0], indexes=[1]))
    run(db_config, tmp_path, body)


def test_a_cancel_that_found_the_stored_jobs_running_is_seen_after_a_restart(db_config,
                                                                             tmp_path):
    """Every stored element was running when the whole array was cancelled; one kill was
    recorded before hq-server stopped. The rest is stored cancelled after the restart."""
    async def body(core: Core) -> None:
        ids = await submit_array(core, "1-50")
        core.server.layouts.stop()   # only the first 10 are stored
        await asyncio.sleep(0)
        assert core.server.dispatcher.round() == 10
        run_ = await core.peers["alice"].next(Run)
        reply = await change(core, Cancel(arrays=[ids[0]]))
        assert reply.arrays[0].results == {"cancelling": 10, "cancelled": 40}
        at = core.clock.now().timestamp()
        first = run_.jobs[0].id
        core.server.dispatcher.on_job_events(core.peers["alice"].link, JobEvents(
            host="n1", events=[JobStarted(id=first, pid=11, at=at),
                               JobEnded(id=first, at=at, pid=11, signal=15,
                                        reason="cancelled")]))
        await core.committed()
        await core.restart()
        await core.server.layouts.settled("alice")
        await core.committed()
        rows = core.rows(reasons(ids[10:]))
        assert len(rows) == 40 and {r.state for r in rows} == {JobState.CANCELLED}
    run(db_config, tmp_path, body, hosts={"n1": 16})

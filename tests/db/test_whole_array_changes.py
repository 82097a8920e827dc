"""``hq-client cancel/hold/release 42_*`` (or ``--array 42``) names a whole array: hq-server
finds its jobs itself and answers with counts per result. Runs on both backends.

What a user checks: every job of the array got the change its state allows, the answer
counts them all (the finished ones too, from memory or, once all have ended, from the
database), and a request naming anything that is not an array of theirs changes nothing.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from fixtures.server_core import Core, core_on

from hq.db.model import jobs
from hq.errors import NotFound
from hq.jobspec import JobSpec
from hq.protocol.messages import Cancel, Hold, JobEnded, JobEvents, JobStarted, Release, Run, Submit
from hq.server import requests

pytestmark = pytest.mark.timeout(60)


def run(db_config, tmp_path, body) -> None:
    async def main() -> None:
        async with core_on(tmp_path, hosts={"n1": 2}, users=["alice", "bob"],
                           db=db_config) as core:
            await core.user_server("alice")
            await body(core)
    asyncio.run(main())


async def submit_array(core: Core, indexes: str, **request) -> list[int]:
    array = JobSpec(command="sim", cwd="/tmp", signature="signed-by-test",
                    array_indexes=indexes)
    reply = await requests.submit(core.server, core.session("alice"), Submit(
        jobs=[array], environment={"PATH": "/bin"}, umask=0o022, **request))
    return reply.ids


async def change(core: Core, request, user: str = "alice"):
    return await requests.USER_REQUESTS[type(request)](core.server, core.session(user), request)


def stored_states(core: Core, ids: list[int]) -> dict[str, int]:
    rows = core.rows(sa.select(jobs.c.state, sa.func.count()).where(jobs.c.id.in_(ids))
                     .group_by(jobs.c.state))
    return {str(state): n for state, n in rows}


def test_a_whole_array_is_changed_and_counted_by_result(db_config, tmp_path):
    async def body(core: Core) -> None:
        ids = await submit_array(core, "1-20")
        assert core.server.dispatcher.round() == 2
        first, second = (job.id for job in (await core.peers["alice"].next(Run)).jobs)
        at = core.clock.now().timestamp()
        core.server.dispatcher.on_job_events(core.peers["alice"].link, JobEvents(
            host="n1", events=[JobStarted(id=first, pid=11, at=at),
                               JobEnded(id=first, at=at, pid=11, exit_code=0),
                               JobStarted(id=second, pid=12, at=at)]))
        held = await change(core, Hold(arrays=[ids[0]]))
        assert held.results == []
        assert [(a.id, a.results) for a in held.arrays] == [
            (ids[0], {"held": 18, "not pending (running)": 1, "not pending (done)": 1})]
        released = await change(core, Release(arrays=[ids[0]]))
        assert released.arrays[0].results == {"released": 18, "not held (running)": 1,
                                              "not held (done)": 1}
        cancelled = await change(core, Cancel(arrays=[ids[0]]))
        assert cancelled.arrays[0].results == {"cancelled": 18, "cancelling": 1,
                                               "already done": 1}
        await core.committed()
        assert stored_states(core, ids) == {"cancelled": 18, "running": 1, "done": 1}
    run(db_config, tmp_path, body)


def test_an_array_whose_jobs_all_ended_is_counted_by_the_database(db_config, tmp_path):
    async def body(core: Core) -> None:
        ids = await submit_array(core, "1-5", hold=True)
        await change(core, Cancel(ids=ids[:2]))
        await change(core, Cancel(arrays=[ids[0]]))
        await core.restart()   # nothing of it is in memory any more
        await core.user_server("alice")
        again = await change(core, Cancel(arrays=[ids[0]]))
        assert again.arrays[0].results == {"already cancelled": 5}
    run(db_config, tmp_path, body)


def test_a_request_naming_what_is_not_an_array_of_mine_changes_nothing(db_config, tmp_path):
    async def body(core: Core) -> None:
        ids = await submit_array(core, "1-4", hold=True)
        (single,) = await core.submit("alice", "true")
        for user, arrays, missing in (("bob", [ids[0]], ids[0]),          # not bob's
                                      ("alice", [ids[0], ids[1]], ids[1]),  # an element
                                      ("alice", [ids[0], single], single),  # a lone job
                                      ("alice", [ids[0], 99_999], 99_999)):
            with pytest.raises(NotFound, match=f"no such array: {missing}"):
                await change(core, Release(arrays=arrays), user=user)
        await core.committed()
        assert stored_states(core, ids) == {"held": 4}
    run(db_config, tmp_path, body)

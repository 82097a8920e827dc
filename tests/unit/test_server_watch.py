"""The dashboard's long poll (``Watch``) on a real hq-server core with a stepped clock:
when it answers, what each caller sees, and what it costs at most."""

from __future__ import annotations

import asyncio
import time

import pytest
from fixtures.server_core import Core, core_test

from hq.errors import Busy
from hq.jobspec import JobSpec
from hq.protocol.messages import Submit, Watch
from hq.server import requests, watch
from hq.server.core import Session

pytestmark = pytest.mark.timeout(60)


def admin_session(core: Core) -> Session:
    return Session(core.server.users["alice"], "admin", 4243)


async def submit_array(core: Core, user: str, count: int, name: str) -> list[int]:
    jobs = [JobSpec(command=f"echo {name} {i}", cwd="/tmp", name=name, array_index=i,
                    signature="signed-by-test") for i in range(1, count + 1)]
    reply = await requests.submit(core.server, core.session(user),
                                  Submit(jobs=jobs, environment={"PATH": "/bin"}, umask=0o022))
    return reply.ids


@core_test()
async def test_a_watch_behind_the_counter_is_answered_at_once(core: Core):
    await core.submit("alice", "sleep 1")
    started = time.monotonic()
    reply = await watch.watch(core.server, core.session("alice"), Watch(since=0, timeout_s=30))
    assert time.monotonic() - started < 1.0
    assert reply.counter > 0 and [j.command for j in reply.jobs] == ["sleep 1"]
    # hq-server restarted (its counter is lower than the caller's): at once as well
    again = await watch.watch(core.server, core.session("alice"),
                              Watch(since=reply.counter + 1000, timeout_s=30))
    assert again.counter == reply.counter


@core_test()
async def test_a_watch_waits_for_the_next_change_and_then_sees_it(core: Core):
    await core.user_server("alice")
    first = await watch.watch(core.server, core.session("alice"), Watch(since=0))
    waiting = asyncio.create_task(watch.watch(core.server, core.session("alice"),
                                              Watch(since=first.counter, timeout_s=30)))
    await asyncio.sleep(0.3)
    assert not waiting.done()                      # nothing changed: it waits
    ids = await core.submit("alice", "true", "sleep 5")
    reply = await asyncio.wait_for(waiting, 5)
    assert reply.counter > first.counter
    # one submission of two jobs (a jobs file): one row for both
    assert [(j.id, j.jobs, j.array) for j in reply.jobs] == [(ids[0], 2, False)]


@core_test()
async def test_a_watch_with_no_change_answers_at_its_timeout(core: Core):
    first = await watch.watch(core.server, core.session("alice"), Watch(since=0))
    started = time.monotonic()
    reply = await watch.watch(core.server, core.session("alice"),
                              Watch(since=first.counter, timeout_s=0.3))
    assert 0.25 < time.monotonic() - started < 2.0
    assert reply.counter == first.counter


@core_test()
async def test_pending_watches_per_connection_are_capped(core: Core):
    admin = admin_session(core)
    first = await watch.watch(core.server, admin, Watch(since=0))
    waiting = asyncio.create_task(watch.watch(core.server, admin,
                                              Watch(since=first.counter, timeout_s=30)))
    await asyncio.sleep(0.1)
    with pytest.raises(Busy, match="waiting on this connection"):
        await watch.watch(core.server, admin, Watch(since=first.counter, timeout_s=30))
    # another connection of the same admin is not held to this one's
    other = Session(core.server.users["alice"], "admin", 4244)
    assert (await watch.watch(core.server, other, Watch(since=first.counter, timeout_s=0))
            ).counter == first.counter
    await core.submit("bob", "true")
    await asyncio.wait_for(waiting, 5)
    # once answered, the connection may wait again
    assert (await watch.watch(core.server, admin, Watch(since=0))).admin


@core_test()
async def test_a_user_sees_only_own_rows_and_reasons_but_everyones_counts_and_hosts(core: Core):
    await core.submit("alice", "echo alice-secret", name="alice-job")
    await core.submit("bob", "echo bob-secret", name="bob-job")
    reply = await watch.watch(core.server, core.session("bob"), Watch(since=0))
    assert {j.owner for j in reply.jobs} == {"bob"}
    assert "alice" not in repr(reply.jobs) and "alice-secret" not in repr(reply)
    queue = {q.user: q for q in reply.queue}
    assert queue["alice"].counts == {"pending": 1} and queue["alice"].reasons == {}
    assert queue["bob"].reasons == {
        "waiting for the user-server of bob (any hq-client command starts it)": 1}
    assert [(h.name, h.cores, h.cores_busy) for h in reply.hosts] == [("n1", 2, 0)]
    assert not reply.admin
    admin = await watch.watch(core.server, admin_session(core), Watch(since=0))
    assert admin.admin and {j.owner for j in admin.jobs} == {"alice", "bob"}
    assert {q.user: bool(q.reasons) for q in admin.queue} == {"alice": True, "bob": True}


@core_test(hosts={"n1": 2})
async def test_an_array_is_one_row_with_its_progress(core: Core):
    await core.user_server("alice")
    ids = await submit_array(core, "alice", 5, "sweep")
    assert core.server.dispatcher.round() == 2
    reply = await watch.watch(core.server, core.session("alice"), Watch(since=0))
    [row] = reply.jobs
    assert (row.id, row.array, row.jobs, row.active, row.ended, row.state, row.name) == (
        ids[0], True, 5, 2, 0, "running", "sweep")
    hosts = {h.name: h for h in reply.hosts}
    assert hosts["n1"].cores_busy == 2 and hosts["n1"].running_jobs == 2


@core_test()
async def test_the_rows_are_capped_at_the_limit_and_say_there_is_more(core: Core):
    for n in range(5):
        await core.submit("alice", f"echo {n}")
    reply = await watch.watch(core.server, core.session("alice"), Watch(since=0, limit=3))
    assert len(reply.jobs) == 3 and reply.more
    assert [j.command for j in reply.jobs] == ["echo 4", "echo 3", "echo 2"]
    whole = await watch.watch(core.server, core.session("alice"), Watch(since=0, limit=10))
    assert len(whole.jobs) == 5 and not whole.more
    # finished ones count towards the limit too
    requests.cancel(core.server, core.session("alice"), requests.Cancel(ids=[1, 2]))
    reply = await watch.watch(core.server, core.session("alice"), Watch(since=0, limit=3))
    assert [j.command for j in reply.jobs] == ["echo 4", "echo 3", "echo 2"] and reply.more
    reply = await watch.watch(core.server, core.session("alice"), Watch(since=0, limit=5))
    assert [j.state for j in reply.jobs][3:] == ["cancelled", "cancelled"] and not reply.more


@core_test()
async def test_finished_jobs_stay_as_rows_with_their_state(core: Core):
    ids = await core.submit("alice", "true")
    requests.cancel(core.server, core.session("alice"), requests.Cancel(ids=ids))
    await core.committed()
    reply = await watch.watch(core.server, core.session("alice"), Watch(since=0))
    assert [(j.id, j.state, j.ended) for j in reply.jobs] == [(ids[0], "cancelled", 1)]

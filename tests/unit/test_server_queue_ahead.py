"""hq-server's core, stepped by hand: jobs queued ahead at exec-servers (allotments, depth,
withdraw, fair share), on the harness of tests/fixtures/server_core.py."""

from __future__ import annotations

import pytest
from fixtures.server_core import Core, core_test, states

from hq.protocol.messages import (
    Cancel,
    CancelJobs,
    Hold,
    JobEnded,
    JobEvents,
    JobStarted,
    QueuedJob,
    Release,
    Run,
    RunningJob,
    SetHostActive,
    Sync,
    Withdraw,
)
from hq.server import admin, requests

pytestmark = pytest.mark.timeout(60)


# --- jobs queued ahead at exec-servers ------------------------------------------------------

async def queueing(core: Core, user: str, count: int, run_time_s: float = 0.01,
                   host: str = "n1") -> tuple[list[int], Run]:
    """``user``'s exec-server on ``host`` keeps a queue; ``count`` short jobs of one
    submission, two of them run and ended (their run time sets the depth); the next Run."""
    peer = core.peers.get(user) or await core.user_server(user)
    core.server.dispatcher.on_sync(peer.link, Sync(host=host, running=[], ended=[],
                                                   queues=True))
    ids = await core.submit(user, *["true"] * count)
    assert core.server.dispatcher.round() == 2            # no run time known yet: cores only
    first = await peer.next(Run)
    assert first.cores == 2 and len(first.jobs) == 2
    core.server.dispatcher.on_job_events(peer.link, JobEvents(host=host, events=[
        JobEnded(id=j.id, at=100.0 + run_time_s, started_at=100.0, pid=7, exit_code=0)
        for j in first.jobs]))
    await core.committed()
    core.server.dispatcher.round()
    return ids, await peer.next(Run)


@core_test()
async def test_short_jobs_are_queued_ahead_within_the_allotment(core: Core):
    ids, run = await queueing(core, "alice", 300)
    # 2 cores, 10 ms a job: about 1 s of work per core waits there, beyond the 2 that start
    assert run.cores == 2
    assert len(run.jobs) == 2 + 2 * 100
    assert [j.id for j in run.jobs] == ids[2:2 + len(run.jobs)]   # in order
    cluster = core.server.cluster
    assert cluster.hosts["n1"].used_cores == 2                # queued jobs hold no core
    assert states(core, [run.jobs[-1].id]) == {run.jobs[-1].id: "dispatched"}
    assert core.server.dispatcher.round() == 0            # full until jobs end


@core_test()
async def test_jobs_asking_for_memory_are_not_queued_ahead(core: Core):
    peer = await core.user_server("alice")
    core.server.dispatcher.on_sync(peer.link, Sync(host="n1", running=[], ended=[],
                                                   queues=True))
    await core.submit("alice", *["true"] * 10, memory_mb=10)
    assert core.server.dispatcher.round() == 2
    run = await peer.next(Run)
    core.server.dispatcher.on_job_events(peer.link, JobEvents(host="n1", events=[
        JobStarted(id=run.jobs[0].id, pid=7, at=100.0),
        JobEnded(id=run.jobs[0].id, at=100.01, started_at=100.0, pid=7, exit_code=0)]))
    await core.committed()
    assert core.server.dispatcher.round() == 1            # the free core only


@core_test()
async def test_long_jobs_are_not_queued_ahead(core: Core):
    _ids, run = await queueing(core, "alice", 20, run_time_s=5.0)
    assert len(run.jobs) == 2 and run.cores == 2


@core_test()
async def test_a_queued_job_ends_once_and_its_core_goes_to_the_next(core: Core):
    ids, run = await queueing(core, "alice", 10)
    peer, cluster = core.peers["alice"], core.server.cluster
    queued = [j.id for j in run.jobs]
    # the exec-server starts the third when the first ends, with no message in between
    core.server.dispatcher.on_job_events(peer.link, JobEvents(host="n1", events=[
        JobStarted(id=queued[0], pid=10, at=200.0), JobStarted(id=queued[1], pid=11, at=200.0),
        JobEnded(id=queued[0], at=200.01, started_at=200.0, pid=10, exit_code=0),
        JobStarted(id=queued[2], pid=12, at=200.01)]))
    await core.committed()
    assert states(core, queued[:4]) == {queued[0]: "done", queued[1]: "running",
                                        queued[2]: "running", queued[3]: "dispatched"}
    assert cluster.hosts["n1"].used_cores == 2 and cluster.allotment("alice", "n1") == 2
    # a sync that lists the queued jobs loses none of them
    core.server.dispatcher.on_sync(peer.link, Sync(
        host="n1", running=[RunningJob(id=queued[1], pid=11, started_at=200.0),
                            RunningJob(id=queued[2], pid=12, started_at=200.01)],
        ended=[], queued=[QueuedJob(id=i) for i in queued[3:]], queues=True))
    await core.committed()
    assert set(states(core, queued[3:]).values()) == {"dispatched"}
    assert ids[-1] == queued[-1]


@core_test()
async def test_queued_jobs_unknown_to_a_sync_go_back_without_a_restart(core: Core):
    _ids, run = await queueing(core, "alice", 10)
    peer = core.peers["alice"]
    queued = [j.id for j in run.jobs]
    core.server.dispatcher.on_sync(peer.link, Sync(
        host="n1", running=[RunningJob(id=queued[0], pid=11, started_at=200.0)], ended=[],
        queues=True))            # the exec-server restarted: its queue is gone
    await core.committed()
    jobs = core.server.cluster.jobs
    assert states(core, queued[1:]) == {i: "pending" for i in queued[1:]}
    # never reached as far as anyone knows: the same attempt may go again (the ledger hands
    # it over again as harmless)
    assert all(jobs[i].restart_count == 0 and jobs[i].attempt == 0 for i in queued[1:])
    assert core.server.cluster.hosts["n1"].used_cores == 1    # the running one's core


@core_test()
async def test_hold_withdraws_a_queued_job_and_it_never_starts(core: Core):
    _ids, run = await queueing(core, "alice", 10)
    peer, alice = core.peers["alice"], core.session("alice")
    first, last = run.jobs[0].id, run.jobs[-1].id
    reply = requests.hold(core.server, alice, Hold(ids=[first, last]))
    assert [r.result for r in reply.results] == ["holding (if it has not started)"] * 2
    withdraw = await peer.next(Withdraw)
    assert (withdraw.host, withdraw.ids, withdraw.attempts) == ("n1", [first, last], [0, 0])
    # the exec-server: the first had started, the last is given back unstarted
    core.server.dispatcher.on_job_events(peer.link, JobEvents(host="n1", events=[
        JobStarted(id=first, pid=10, at=200.0),
        JobEnded(id=last, at=200.0, reason="withdrawn")]))
    await core.committed()
    assert states(core, [first, last]) == {first: "running", last: "held"}
    job = core.server.cluster.jobs[last]
    assert (job.restart_count, job.attempt, job.hold_requested) == (0, 1, False)
    # a late start of the withdrawn attempt is not taken for a run
    core.server.dispatcher.on_job_events(peer.link, JobEvents(host="n1", events=[
        JobStarted(id=last, pid=99, at=201.0)]))
    await core.committed()
    assert states(core, [last]) == {last: "held"}
    assert requests.release(core.server, alice, Release(ids=[last])).results[0].result \
        == "released"


@core_test()
async def test_cancel_of_a_queued_job_ends_it_cancelled(core: Core):
    _ids, run = await queueing(core, "alice", 10)
    peer, last = core.peers["alice"], run.jobs[-1].id
    reply = requests.cancel(core.server, core.session("alice"), Cancel(ids=[last]))
    assert reply.results[0].result == "cancelling"
    assert (await peer.next(CancelJobs)).ids == [last]
    core.server.dispatcher.on_job_events(peer.link, JobEvents(host="n1", events=[
        JobEnded(id=last, at=200.0, reason="cancelled")]))
    await core.committed()
    assert states(core, [last]) == {last: "cancelled"}


@core_test()
async def test_deactivating_a_host_withdraws_what_waits_there(core: Core):
    _ids, run = await queueing(core, "alice", 10)
    peer = core.peers["alice"]
    reply = admin.set_host_active(core.server, core.session("alice"),
                                  SetHostActive(host="n1", active=False))
    assert reply.changed
    withdraw = await peer.next(Withdraw)
    assert withdraw.ids == [j.id for j in run.jobs]
    core.server.dispatcher.on_job_events(peer.link, JobEvents(host="n1", events=[
        JobEnded(id=i, at=200.0, reason="withdrawn") for i in withdraw.ids]))
    await core.committed()
    assert set(states(core, withdraw.ids).values()) == {"pending"}
    assert core.server.cluster.hosts["n1"].used_cores == 0
    assert core.server.dispatcher.round() == 0


@core_test()
async def test_a_queue_runs_dry_when_another_user_waits(core: Core):
    _ids, run = await queueing(core, "alice", 400)
    alice, cluster = core.peers["alice"], core.server.cluster
    bob = await core.user_server("bob")
    (bob_job,) = await core.submit("bob", "true")
    # alice holds both cores: no free core for bob, and alice's queue is not refilled
    assert core.server.dispatcher.round() == 0
    # alice's queue drains: the first job she has no successor for frees a core for bob
    queued = [j.id for j in run.jobs]
    core.server.dispatcher.on_job_events(alice.link, JobEvents(host="n1", events=[
        *[JobStarted(id=i, pid=10 + n, at=200.0) for n, i in enumerate(queued)],
        *[JobEnded(id=i, at=200.01, started_at=200.0, pid=10 + n, exit_code=0)
          for n, i in enumerate(queued[:-1])]]))
    await core.committed()
    assert cluster.allotment("alice", "n1") == 1
    core.server.dispatcher.round()      # bob's job on the free core; alice's queue, her share
    assert (await bob.next(Run)).jobs[0].id == bob_job
    assert cluster.allotment("alice", "n1") == 1 and cluster.allotment("bob", "n1") == 1


@core_test(hosts={"n1": 2, "n2": 2})
async def test_a_users_queue_is_spread_over_its_hosts(core: Core):
    peer = await core.user_server("alice")
    for host in ("n1", "n2"):
        core.server.dispatcher.on_sync(peer.link, Sync(host=host, running=[], ended=[],
                                                       queues=True))
    await core.submit("alice", *["true"] * 100)
    assert core.server.dispatcher.round() == 4
    first = [await peer.next(Run), await peer.next(Run)]
    for run in first:
        core.server.dispatcher.on_job_events(peer.link, JobEvents(host=run.host.name, events=[
            JobStarted(id=run.jobs[0].id, pid=7, at=100.0),
            JobEnded(id=run.jobs[0].id, at=100.1, started_at=100.0, pid=7, exit_code=0)]))
    await core.committed()
    # 100 ms a job: 10 a core may wait; n1 and n2 each have 1 running and 1 free core
    assert core.server.dispatcher.round() == 2 + 2 * (2 * 11 - 2)
    runs = {r.host.name: r for r in [await peer.next(Run), await peer.next(Run)]}
    assert {h: len(r.jobs) for h, r in runs.items()} == {"n1": 21, "n2": 21}
    assert {h: r.cores for h, r in runs.items()} == {"n1": 2, "n2": 2}


@core_test()
async def test_queued_ahead_jobs_count_toward_a_group_limit(core: Core):
    from hq.server.scheduler import GroupLimits, UserLimits

    # as hq.limits_config would make them for a group "physics" that alice is in
    core.server.cluster.user_limits = {"alice": UserLimits(groups=("physics",))}
    core.server.cluster.group_limits = {"physics": GroupLimits(max_running=12)}
    ids, run = await queueing(core, "alice", 300)
    # 2 start on the free cores, 10 more wait there: the group's 12, not the 202 the
    # allotment would take
    assert len(run.jobs) == 12 and [j.id for j in run.jobs] == ids[2:14]
    assert core.server.dispatcher.round() == 0

"""hq-server's core, stepped by hand: rounds, reports, reconciliation, requests, silence.

A real ``Server`` on a scratch SQLite database (tests/fixtures/server_core.py); user-servers
are channels over socket pairs, and the clock moves only when a test says so.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from fixtures.server_core import Core, core_test, dispatched, settle, states, transitions

from hq.db.model import hosts, jobs
from hq.errors import NotFound
from hq.protocol.messages import (
    Ack,
    Cancel,
    CancelJobs,
    Heartbeat,
    Hold,
    HostStateReport,
    JobEnded,
    JobEvents,
    Jobs,
    JobStarted,
    Release,
    Run,
    RunningJob,
    Show,
    Status,
    Sync,
    Undeliverable,
    Wait,
)
from hq.server import requests
from hq.states import HostState, InvalidTransition, JobState

pytestmark = pytest.mark.timeout(60)



# --- rounds ------------------------------------------------------------------------------

@core_test()
async def test_a_round_records_dispatched_before_it_sends_run(core: Core):
    await core.user_server("alice")
    ids = await core.submit("alice", "true", "true", "true")
    assert core.server.dispatcher.round() == 2       # two cores on n1
    run = await core.peers["alice"].next(Run)
    # the Run went out after the commit: the database already says dispatched
    assert states(core, ids) == {ids[0]: "dispatched", ids[1]: "dispatched", ids[2]: "pending"}
    assert [j.id for j in run.jobs] == ids[:2] and run.host.name == "n1"
    assert run.submissions[str(run.jobs[0].submission_id)].umask == 0o022
    assert core.server.cluster.hosts["n1"].used_cores == 2
    assert core.server.dispatcher.round() == 0        # full


@core_test()
async def test_no_round_for_a_user_without_user_server_or_a_deactivated_cluster(core: Core):
    ids = await core.submit("alice", "true")
    assert core.server.dispatcher.round() == 0        # alice's user-server is not connected
    await core.user_server("alice")
    core.server.cluster.active = False
    assert core.server.dispatcher.round() == 0
    reply = await requests.show(core.server, core.session("alice"), Show(id=ids[0]))
    assert reply.job.state_reason == "the cluster is deactivated (hq-admin activate)"


@core_test(hosts={"n1": 1, "n2": 1})
async def test_an_unreachable_host_is_skipped_until_the_retry_time(core: Core):
    peer = await core.user_server("alice")
    core.server.dispatcher.on_host_state(peer.link, HostStateReport(
        host="n1", state="unreachable", reason="connection refused"))
    ids = await core.submit("alice", "true", "true")
    assert core.server.dispatcher.round() == 1
    assert (await peer.next(Run)).host.name == "n2"
    core.clock.advance(core.server.config.retry_unreachable_s + 1)
    assert core.server.dispatcher.round() == 1        # the next try is the probe
    assert (await peer.next(Run)).host.name == "n1"
    await core.committed()
    assert set(states(core, ids).values()) == {"dispatched"}


# --- reports ------------------------------------------------------------------------------

@core_test()
async def test_started_and_ended_are_recorded_and_acked_after_the_commit(core: Core):
    await core.user_server("alice")
    ids, _run = await dispatched(core, "alice", 1)
    (job_id,) = ids
    link = core.peers["alice"].link
    core.server.dispatcher.on_job_events(link, JobEvents(host="n1", events=[
        JobStarted(id=job_id, pid=4321, at=core.clock.now().timestamp()),
        JobEnded(id=job_id, at=core.clock.now().timestamp() + 1, pid=4321, exit_code=0,
                 cpu_time_s=0.01, max_rss_kb=900)]))
    ack = await core.peers["alice"].next(Ack)
    assert ack.ids == [job_id] and ack.host == "n1"
    # one batch held the start and the end: both events, and the row says done
    assert states(core, ids) == {job_id: "done"}
    assert transitions(core, job_id) == [("pending", "dispatched"), ("dispatched", "running"),
                                         ("running", "done")]
    (row,) = core.rows(sa.select(jobs.c.pid, jobs.c.exit_code, jobs.c.max_rss_kb,
                                 jobs.c.host_id, hosts.c.name).join(hosts))
    assert (row.pid, row.exit_code, row.max_rss_kb, row.name) == (4321, 0, 900, "n1")
    assert core.server.cluster.hosts["n1"].used_cores == 0


@core_test()
async def test_a_failure_keeps_its_reason_and_a_repeated_end_changes_nothing(core: Core):
    await core.user_server("alice")
    (job_id,), _run = await dispatched(core, "alice", 1)
    link = core.peers["alice"].link
    end = JobEnded(id=job_id, at=core.clock.now().timestamp(), signal=9, reason="time limit")
    core.server.dispatcher.on_job_events(link, JobEvents(host="n1", events=[end]))
    core.server.dispatcher.on_job_events(link, JobEvents(host="n1", events=[end]))
    await core.peers["alice"].next(Ack)
    await core.peers["alice"].next(Ack)   # acked again, so the exec-server can forget it
    job = core.server.cluster.jobs[job_id]
    assert (job.state, job.reason, job.signal) == (JobState.FAILED, "time limit", 9)
    assert transitions(core, job_id)[-1] == ("dispatched", "failed")
    assert len(transitions(core, job_id)) == 2


@core_test()
async def test_reports_about_another_users_job_are_ignored(core: Core):
    await core.user_server("alice")
    bob = await core.user_server("bob")
    (job_id,), _run = await dispatched(core, "alice", 1)
    core.server.dispatcher.on_job_events(bob.link, JobEvents(host="n1", events=[
        JobEnded(id=job_id, at=1.0, exit_code=0)]))
    core.server.dispatcher.on_sync(bob.link, Sync(host="n1", running=[], ended=[]))
    assert await bob.nothing_more() == []          # no ack for a job that is not bob's
    await core.committed()
    assert states(core, [job_id]) == {job_id: "dispatched"}


@core_test()
async def test_sync_reconciles_the_exec_servers_whole_view(core: Core):
    peer = await core.user_server("alice")
    ids, _run = await dispatched(core, "alice", 2)
    running, vanished = ids
    core.server.dispatcher.on_sync(peer.link, Sync(
        host="n1", running=[RunningJob(id=running, pid=77, started_at=1.0)], ended=[]))
    await core.committed()
    # the one it runs is running; the one it never heard of goes back to the queue
    assert states(core, ids) == {running: "running", vanished: "pending"}
    job = core.server.cluster.jobs[vanished]
    assert job.reason.startswith("requeued: dispatch lost (not known to the exec-server")
    assert job.restart_count == 0                  # it never started: no restart counted


@core_test()
async def test_undeliverable_jobs_go_back_to_the_queue(core: Core):
    peer = await core.user_server("alice")
    ids, _run = await dispatched(core, "alice", 2)
    core.server.dispatcher.on_undeliverable(peer.link, Undeliverable(
        host="n1", ids=ids, reason="ssh: connection refused"))
    await core.committed()
    assert set(states(core, ids).values()) == {"pending"}
    assert core.server.cluster.jobs[ids[0]].reason == "host n1: ssh: connection refused"


@core_test()
async def test_the_monitors_facts_bring_a_host_up_and_its_load_is_recorded_later(core: Core):
    from hq.protocol.messages import HostFacts

    core.server.dispatcher.on_host_facts(HostFacts(
        host="n1", cores=2, cpu_busy=0.25, hq_daemons=0.0, load1=0.25, memory_mb=2000,
        free_memory_mb=1000))
    host = core.server.cluster.hosts["n1"]
    assert (host.state, host.load1) == (HostState.UP, 0.25)
    await core.committed()
    (row,) = core.rows(sa.select(hosts.c.state, hosts.c.load1))
    assert (str(row.state), row.load1) == ("up", None)   # load is written now and then
    core.clock.advance(11)
    core.server.health.check()
    await settle()
    await core.server.store.write(lambda conn: None, what="barrier")
    (row,) = core.rows(sa.select(hosts.c.state, hosts.c.load1))
    assert row.load1 == 0.25


# --- silence and the lease --------------------------------------------------------------------

@core_test(heartbeat_timeout_s=10.0, lease_s=30.0, lease_grace_s=5.0)
async def test_silence_keeps_the_users_jobs_off_then_the_lease_requeues_them(core: Core):
    peer = await core.user_server("alice")
    ids, _run = await dispatched(core, "alice", 2)
    started, queued = ids
    core.server.dispatcher.on_job_events(peer.link, JobEvents(host="n1", events=[
        JobStarted(id=started, pid=5, at=1.0)]))
    health = core.server.health
    core.clock.advance(9)
    health.check()
    assert "n1" not in core.server.cluster.blocked_hosts("alice", core.clock.monotonic())
    core.clock.advance(2)                          # 11 s of silence: alice's jobs stay off
    health.check()
    assert "n1" in core.server.cluster.blocked_hosts("alice", core.clock.monotonic())
    # a user's silence says nothing about the host for the others
    assert core.server.cluster.hosts["n1"].state is not HostState.HEARTBEAT_LOST
    core.clock.advance(23)                         # 34 s: within lease + grace
    health.check()
    await core.committed()
    assert states(core, ids) == {started: "running", queued: "dispatched"}
    core.clock.advance(2)                          # 36 s: past lease + grace
    health.check()
    await core.committed()
    assert states(core, ids) == {started: "pending", queued: "pending"}
    assert core.server.cluster.jobs[started].restart_count == 1
    # the dispatched one never started as far as anyone knows: no restart, but its next run
    # is a new attempt, so whatever its first one left behind cannot be mistaken for it
    assert core.server.cluster.jobs[queued].restart_count == 0
    assert core.server.cluster.jobs[queued].attempt == 1
    assert core.server.cluster.jobs[started].attempt == 1
    assert "lease expired" in core.server.cluster.jobs[started].reason


@core_test(lease_s=30.0, lease_grace_s=5.0)
async def test_a_no_requeue_job_fails_when_its_host_is_lost(core: Core):
    peer = await core.user_server("alice")
    (job_id,) = await core.submit("alice", "true", requeue=False)
    core.server.dispatcher.round()
    await peer.next(Run)
    core.server.dispatcher.on_job_events(peer.link, JobEvents(host="n1", events=[
        JobStarted(id=job_id, pid=5, at=1.0)]))
    core.clock.advance(36)
    core.server.health.check()
    await core.committed()
    job = core.server.cluster.jobs[job_id]
    assert job.state is JobState.FAILED and job.reason.startswith("lost: host n1")


# --- requests ------------------------------------------------------------------------------

@core_test()
async def test_cancel_pending_at_once_and_running_through_its_exec_server(core: Core):
    peer = await core.user_server("alice")
    ids = await core.submit("alice", "sleep 9", "sleep 9", "sleep 9")
    core.server.dispatcher.round()
    await peer.next(Run)
    reply = requests.cancel(core.server, core.session("alice"), Cancel(ids=[*ids, 999]))
    assert [(r.id, r.result) for r in reply.results] == [
        (ids[0], "cancelling"), (ids[1], "cancelling"), (ids[2], "cancelled"),
        (999, "not found")]
    stop = await peer.next(CancelJobs)
    assert (stop.host, stop.ids, stop.reason) == ("n1", ids[:2], "cancelled")
    core.server.dispatcher.on_job_events(peer.link, JobEvents(host="n1", events=[
        JobEnded(id=ids[0], at=2.0, signal=15, reason="cancelled")]))
    await core.committed()
    assert states(core, ids) == {ids[0]: "cancelled", ids[1]: "dispatched",
                                 ids[2]: "cancelled"}
    # a dispatched job whose cancel is pending that turns up running is stopped again
    core.server.dispatcher.on_sync(peer.link, Sync(
        host="n1", running=[RunningJob(id=ids[1], pid=8, started_at=1.0)], ended=[]))
    assert (await peer.next(CancelJobs)).ids == [ids[1]]
    # ... but it ended by itself before the cancel reached it: recorded as what it was
    core.server.dispatcher.on_job_events(peer.link, JobEvents(host="n1", events=[
        JobEnded(id=ids[1], at=3.0, pid=8, started_at=1.0, exit_code=0)]))
    await core.committed()
    assert states(core, ids)[ids[1]] == "done"


@core_test()
async def test_another_users_job_is_not_found_everywhere(core: Core):
    await core.user_server("alice")
    (job_id,) = await core.submit("alice", "true")
    bob = core.session("bob")
    with pytest.raises(NotFound, match=f"no such job: {job_id}"):
        await requests.show(core.server, bob, Show(id=job_id))
    with pytest.raises(NotFound):
        await requests.wait(core.server, bob, Wait(ids=[job_id], timeout_s=0))
    for kind in (Cancel, Hold, Release):
        reply = getattr(requests, kind.__name__.lower())(core.server, bob, kind(ids=[job_id]))
        assert [r.result for r in reply.results] == ["not found"]
    assert (await requests.jobs(core.server, bob, Jobs())).jobs == []
    status = requests.status(core.server, bob, Status())
    assert status.mine == {} and status.others == {"alice": {"pending": 1}}


@core_test()
async def test_hold_and_release(core: Core):
    await core.user_server("alice")
    (job_id,) = await core.submit("alice", "true")
    alice = core.session("alice")
    assert requests.hold(core.server, alice, Hold(ids=[job_id])).results[0].result == "held"
    assert core.server.dispatcher.round() == 0
    assert requests.hold(core.server, alice, Hold(ids=[job_id])).results[0].result == \
        "not pending (held)"
    assert requests.release(core.server, alice,
                            Release(ids=[job_id])).results[0].result == "released"
    assert core.server.dispatcher.round() == 1
    await core.committed()
    assert transitions(core, job_id)[:3] == [("pending", "held"), ("held", "pending"),
                                             ("pending", "dispatched")]


@core_test()
async def test_wait_answers_when_the_jobs_end(core: Core):
    peer = await core.user_server("alice")
    (job_id,), _run = await dispatched(core, "alice", 1)
    waiting = asyncio.create_task(requests.wait(core.server, core.session("alice"),
                                                Wait(ids=[job_id], timeout_s=30)))
    await settle()
    assert not waiting.done()
    core.server.dispatcher.on_job_events(peer.link, JobEvents(host="n1", events=[
        JobEnded(id=job_id, at=2.0, exit_code=3)]))
    reply = await asyncio.wait_for(waiting, 5)
    assert reply.finished and [(j.id, str(j.state), j.exit_code) for j in reply.jobs] == [
        (job_id, "failed", 3)]


@core_test()
async def test_jobs_lists_own_jobs_from_memory_and_the_database(core: Core):
    await core.user_server("alice")
    ids = await core.submit("alice", "true", "true", "true", name="sim")
    requests.cancel(core.server, core.session("alice"), Cancel(ids=ids[:1]))
    await core.committed()
    alice = core.session("alice")
    listing = await requests.jobs(core.server, alice, Jobs(states=[JobState.CANCELLED]))
    assert [j.id for j in listing.jobs] == ids[:1]
    newest = await requests.jobs(core.server, alice, Jobs(limit=2, name="s*"))
    assert [j.id for j in newest.jobs] == ids[1:]
    # a finished job hq-server no longer holds comes from the database
    core.server.cluster.jobs.pop(ids[0])
    shown = await requests.show(core.server, alice, Show(id=ids[0]))
    assert (shown.job.state, shown.job.name) == (JobState.CANCELLED, "sim")


# --- state machine ----------------------------------------------------------------------------

@core_test()
async def test_the_journal_refuses_what_the_state_machine_forbids(core: Core):
    (job_id,) = await core.submit("alice", "true")
    job = core.server.cluster.jobs[job_id]
    with pytest.raises(InvalidTransition, match="pending -> running"):
        core.server.journal.job(job, JobState.RUNNING)
    with pytest.raises(ValueError, match="not outcome fields"):
        core.server.journal.job(job, JobState.HELD, command="rm -rf ~")
    assert job.state is JobState.PENDING
    assert core.server.cluster.counts[("alice", JobState.PENDING)] == 1
    host = core.server.cluster.hosts["n1"]
    core.server.journal.host_state(host, HostState.UP, None)
    with pytest.raises(InvalidTransition, match="up -> unknown"):
        core.server.journal.host_state(host, HostState.UNKNOWN, None)


@core_test()
async def test_a_cancel_is_never_lost_when_its_dispatch_fails(core: Core):
    peer = await core.user_server("alice")
    ids, _run = await dispatched(core, "alice", 2)
    reply = requests.cancel(core.server, core.session("alice"), Cancel(ids=ids))
    assert [r.result for r in reply.results] == ["cancelling", "cancelling"]
    await peer.next(CancelJobs)
    # one never reached its host, the other is not known there: neither goes back to pending
    core.server.dispatcher.on_undeliverable(peer.link, Undeliverable(host="n1", ids=ids[:1],
                                                                     reason="down"))
    core.server.dispatcher.on_sync(peer.link, Sync(host="n1", running=[], ended=[]))
    await core.committed()
    assert states(core, ids) == {ids[0]: "cancelled", ids[1]: "cancelled"}
    assert core.server.dispatcher.round() == 0


@core_test()
async def test_facts_about_a_host_come_from_the_monitor_only(core: Core):
    from hq.protocol.messages import HostFacts, HostReach

    peer = await core.user_server("alice")
    dispatcher, host = core.server.dispatcher, core.server.cluster.hosts["n1"]
    # a user's exec-server says the host is loaded and another user's host is down: ignored
    dispatcher.on_heartbeat(peer.link, Heartbeat(host="n1", load1=900.0, free_memory_mb=0))
    dispatcher.on_host_state(peer.link, HostStateReport(host="n1", state="unreachable",
                                                        reason="alice says so"))
    assert host.load1 is None and host.state is HostState.UNKNOWN
    assert core.server.cluster.blocked_hosts("bob", core.clock.monotonic()) == frozenset()
    assert core.server.cluster.blocked_hosts("alice", core.clock.monotonic()) == {"n1"}
    # the monitor: one core busy with other work on this 2-core host leaves one for hq
    dispatcher.on_host_facts(HostFacts(host="n1", cores=2, cpu_busy=1.1, hq_daemons=0.1,
                                       load1=1.0, memory_mb=1000, free_memory_mb=500))
    assert host.state is HostState.UP and host.load1 == 1.0
    await core.user_server("bob")
    await core.submit("bob", "true", "true")
    assert dispatcher.round() == 1
    # hq's own jobs are not other work: busy with them, the host is full, not "loaded"
    dispatcher.on_host_facts(HostFacts(host="n1", cores=2, cpu_busy=2.0, hq_daemons=0.2,
                                       load1=2.0, memory_mb=1000, free_memory_mb=500))
    assert host.other_work(core.clock.monotonic(), 30.0) == pytest.approx(0.8)
    # a monitor that measures hq's jobs: the jobs that just ended were hq's, not other work
    # (the cores they held are free again by the time the report comes)
    job = next(iter(core.server.cluster.jobs[i] for i in host.jobs))
    core.server.journal.job(job, JobState.CANCELLED, reason="test", ended_at=core.clock.now())
    assert host.used_cores == 0
    dispatcher.on_host_facts(HostFacts(host="n1", cores=2, cpu_busy=2.0, hq_daemons=0.2,
                                       hq_jobs=1.7, load1=2.0, memory_mb=1000,
                                       free_memory_mb=500))
    assert host.other_work(core.clock.monotonic(), 30.0) == pytest.approx(0.1)
    # and facts that grew old are unknown: free cores decide
    core.clock.advance(31)
    assert host.other_work(core.clock.monotonic(), 30.0) is None
    dispatcher.on_host_reach(HostReach(host="n1", state="unreachable", reason="ssh: refused"))
    assert host.state is HostState.UNREACHABLE and host.state_reason == "ssh: refused"


@core_test()
async def test_a_report_that_frees_a_core_from_other_work_starts_a_round(core: Core):
    from hq.protocol.messages import HostFacts

    dispatcher = core.server.dispatcher
    await core.user_server("alice")
    facts = dict(host="n1", cores=2, hq_daemons=0.0, load1=0.0, memory_mb=1000,
                 free_memory_mb=500)
    dispatcher.on_host_facts(HostFacts(cpu_busy=0.0, **facts))   # up: a round is due
    dispatcher.round()
    dispatcher._wake.clear()
    # two cores of other work (a report taken while jobs ended counts their moment of CPU
    # so): the load rule holds the jobs back
    dispatcher.on_host_facts(HostFacts(cpu_busy=2.0, hq_jobs=0.0, **facts))
    await core.submit("alice", "true", "true")
    assert dispatcher.round() == 0
    dispatcher._wake.clear()
    # the same load again is no news; the next report with the cores free is: a round now,
    # not at the next periodic one
    dispatcher.on_host_facts(HostFacts(cpu_busy=2.0, hq_jobs=0.0, **facts))
    assert not dispatcher._wake.is_set()
    dispatcher.on_host_facts(HostFacts(cpu_busy=0.1, hq_jobs=0.0, **facts))
    assert dispatcher._wake.is_set()
    assert dispatcher.round() == 2

"""hq-server's core with arrays and dependencies, stepped by hand: caps bound what a round
takes, jobs waiting on others stay out of the queues, and an end that can never meet a
dependency cancels the chain behind it (tests/fixtures/server_core.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from fixtures.server_core import Core, core_test, settle, states

from hq.db.model import job_dependencies
from hq.errors import NotFound, UsageError
from hq.jobspec import JobSpec
from hq.protocol.messages import (
    DependencyRef,
    JobEnded,
    JobEvents,
    JobStarted,
    Run,
    Show,
    Submit,
    UpdateArray,
)
from hq.server import requests
from hq.server.workflows import update_array
from hq.states import JobState

pytestmark = pytest.mark.timeout(60)


async def submit(core: Core, user: str, commands: list[str], *, indexes: bool = False,
                 **request: Any) -> list[int]:
    jobs = [JobSpec(command=c, cwd="/tmp", signature="signed-by-test",
                    array_index=i if indexes else None) for i, c in enumerate(commands, 1)]
    reply = await requests.submit(core.server, core.session(user), Submit(
        jobs=jobs, environment={"PATH": "/bin"}, umask=0o022, **request))
    return reply.ids


def end(core: Core, user: str, job_id: int, exit_code: int = 0) -> None:
    link = core.peers[user].link
    host = core.server.cluster.jobs[job_id].host
    at = core.clock.now().timestamp()
    core.server.dispatcher.on_job_events(link, JobEvents(host=host, events=[
        JobStarted(id=job_id, pid=4321, at=at),
        JobEnded(id=job_id, at=at, pid=4321, exit_code=exit_code)]))


def state(core: Core, job_id: int) -> JobState:
    return core.server.cluster.jobs[job_id].state


@core_test(hosts={"n1": 8})
async def test_a_cap_bounds_what_each_round_takes_of_an_array(core: Core):
    await core.user_server("alice")
    ids = await submit(core, "alice", ["true"] * 6, indexes=True, array_cap=2)
    assert core.server.dispatcher.round() == 2
    run = await core.peers["alice"].next(Run)
    assert [j.id for j in run.jobs] == ids[:2] and run.jobs[0].array_id == ids[0]
    assert core.server.dispatcher.round() == 0      # six free cores, but the cap is reached
    info = (await requests.show(core.server, core.session("alice"), Show(id=ids[2]))).job
    assert info.state_reason == f"array {ids[0]} has its cap of 2 running"
    end(core, "alice", ids[0])
    assert core.server.dispatcher.round() == 1
    assert state(core, ids[2]) is JobState.DISPATCHED
    await update_array_async(core, "alice", ids[0], 0)   # no cap: all the rest at once
    assert core.server.dispatcher.round() == 3
    await core.committed()
    assert set(states(core, ids).values()) == {"dispatched", "done"}


@core_test(hosts={"n1": 8})
async def test_an_array_signed_as_a_whole_is_laid_out_into_its_elements(core: Core):
    from hq.db.jobs import find_job
    from hq.db.model import submissions

    await core.user_server("alice")
    array = JobSpec(command="sim", cwd="/tmp", signature="signed-by-test",
                    array_indexes="2-6:2,9")
    reply = await requests.submit(core.server, core.session("alice"), Submit(
        jobs=[array], environment={"PATH": "/bin"}, umask=0o022, array_cap=2))
    ids = reply.ids
    assert len(ids) == 4 and ids == list(range(ids[0], ids[0] + 4))
    jobs = core.server.cluster.jobs
    assert [jobs[i].spec.array_index for i in ids] == [2, 4, 6, 9]
    assert {jobs[i].array_id for i in ids} == {ids[0]}
    assert core.server.dispatcher.round() == 2       # the cap holds for it as for any array
    run = await core.peers["alice"].next(Run)
    assert [(j.spec.array_index, j.spec.array_indexes, j.spec.signature) for j in run.jobs] \
        == [(2, "2-6:2,9", "signed-by-test"), (4, "2-6:2,9", "signed-by-test")]
    await core.committed()
    assert core.rows(sa.select(submissions.c.array_indexes)
                     .where(submissions.c.id == reply.submission_id))[0][0] == "2-6:2,9"
    with core.engine.connect() as conn:
        assert find_job(conn, ids[3]).spec == jobs[ids[3]].spec   # read back as signed
    # such a spec comes alone, never streamed, never with an index of its own
    for bad in ([array, array], [msgspec.structs.replace(array, array_index=2)]):
        with pytest.raises(UsageError, match="whole array"):
            await requests.submit(core.server, core.session("alice"), Submit(
                jobs=bad, environment={"PATH": "/bin"}, umask=0o022))


@core_test(hosts={"n1": 2})
async def test_a_folded_listing_is_one_line_per_array_whatever_its_size(core: Core):
    from hq.cli.jobview import format_job_table
    from hq.protocol.messages import Jobs

    await core.user_server("alice")
    (single,) = await submit(core, "alice", ["sleep 1"])
    array = JobSpec(command="sim", cwd="/tmp", signature="signed-by-test",
                    array_indexes="1-20000", name="scan")
    ids = (await requests.submit(core.server, core.session("alice"), Submit(
        jobs=[array], environment={"PATH": "/bin"}, umask=0o022))).ids
    (lone,) = await submit(core, "alice", ["true"], indexes=True)   # an array of one
    await submit(core, "bob", ["true"] * 3, indexes=True)           # not alice's
    assert core.server.dispatcher.round() == 2
    requests.hold(core.server, core.session("alice"), requests.Hold(ids=ids[5:10]))
    unfinished = [JobState.PENDING, JobState.HELD, JobState.DISPATCHED, JobState.RUNNING]
    reply = await requests.jobs(core.server, core.session("alice"),
                                Jobs(states=unfinished, fold=True))
    assert [job.id for job in reply.jobs] == [single, lone] and not reply.more
    (line,) = reply.arrays
    assert (line.id, line.first, line.indexes, line.name) == (ids[0], ids[0], "1-20000", "scan")
    assert line.counts == {JobState.DISPATCHED: 1, JobState.HELD: 5, JobState.PENDING: 19994}
    assert line.hosts == ["n1"] and line.reason is not None
    table = format_job_table(reply.jobs, arrays=reply.arrays).splitlines()
    assert [row.split()[0] for row in table[1:]] == [str(single), f"{ids[0]}_[1-20000]",
                                                     f"{lone}"]
    assert "19994 pending, 5 held, 1 dispatched" in table[2]
    # a page of its own for the other jobs: the arrays come with the first one only
    reply = await requests.jobs(core.server, core.session("alice"),
                                Jobs(states=unfinished, fold=True, limit=1))
    assert [job.id for job in reply.jobs] == [lone] and reply.more and reply.arrays
    reply = await requests.jobs(core.server, core.session("alice"),
                                Jobs(states=unfinished, fold=True, limit=1, before=lone))
    assert [job.id for job in reply.jobs] == [single] and not reply.arrays
    # filters hold inside arrays: only the held ones
    reply = await requests.jobs(core.server, core.session("alice"),
                                Jobs(states=[JobState.HELD], fold=True))
    assert reply.jobs == [] and reply.arrays[0].indexes == "6-10"


@core_test(hosts={"n1": 2})
async def test_an_array_stored_after_a_later_job_still_queues_first(core: Core):
    """A big array's later batches join a queue that already holds a newer job: the queue
    stays in id order, so the array's jobs still go first (and no batch re-sorts it)."""
    await core.user_server("alice")
    array = JobSpec(command="sim", cwd="/tmp", signature="signed-by-test",
                    array_indexes="1-3000")
    ids = (await requests.submit(core.server, core.session("alice"), Submit(
        jobs=[array], environment={"PATH": "/bin"}, umask=0o022))).ids
    (later,) = await submit(core, "alice", ["true"])
    await core.server.layouts.settled("alice")
    cluster = core.server.cluster
    (queue,) = cluster.pending_queues.values()
    assert list(queue) == [*ids, later]
    assert [job.id for job in cluster.pending_heads(3, {"alice"})] == ids[:3]
    assert core.server.dispatcher.round() == 2
    assert [state(core, i) for i in ids[:2]] == [JobState.DISPATCHED] * 2


async def update_array_async(core: Core, user: str, array: int, cap: int) -> None:
    update_array(core.server, core.session(user), UpdateArray(array=array, cap=cap))
    await core.committed()


@core_test()
async def test_only_the_owner_may_change_an_array(core: Core):
    ids = await submit(core, "alice", ["true"] * 3, indexes=True, array_cap=1)
    with pytest.raises(NotFound):
        update_array(core.server, core.session("bob"), UpdateArray(array=ids[0], cap=5))
    with pytest.raises(NotFound):   # a job of an array, not its id
        update_array(core.server, core.session("alice"), UpdateArray(array=ids[1], cap=5))


@core_test(hosts={"n1": 4})
async def test_jobs_waiting_on_others_are_out_of_the_queues(core: Core):
    await core.user_server("alice")
    (first,) = await submit(core, "alice", ["true"], hold=True)
    waiting = await submit(core, "alice", ["true"] * 5000,
                           dependencies=[DependencyRef("afterok", first)])
    cluster = core.server.cluster
    # nothing of them is in a queue: no round looks at them, however many there are
    assert not cluster.pending_queues
    assert core.server.dispatcher.round() == 0
    info = (await requests.show(core.server, core.session("alice"), Show(id=waiting[7]))).job
    assert info.state_reason == f"waiting for job {first} (afterok)"
    assert [(d.id, d.kind, d.state) for d in info.dependencies] == [(first, "afterok", "held")]
    requests.release(core.server, core.session("alice"), requests.Release(ids=[first]))
    assert core.server.dispatcher.round() == 1
    end(core, "alice", first)
    await core.committed()
    assert sum(len(q) for q in cluster.pending_queues.values()) == 5000
    rows = core.rows(sa.select(sa.func.count()).select_from(job_dependencies))
    assert rows[0][0] == 5000


@core_test()
async def test_a_failure_cancels_the_chain_behind_it_without_recursion(core: Core):
    await core.user_server("alice")
    (a,) = await submit(core, "alice", ["exit 1"])
    chain = [a]
    for _ in range(1500):   # deeper than Python's recursion limit
        chain += await submit(core, "alice", ["true"],
                              dependencies=[DependencyRef("afterok", chain[-1])])
    (rescue,) = await submit(core, "alice", ["true"],
                             dependencies=[DependencyRef("afternotok", chain[1])])
    core.server.dispatcher.round()
    end(core, "alice", a, exit_code=1)
    await core.committed()
    jobs = core.server.cluster.jobs
    assert jobs[chain[1]].reason == f"dependency never satisfied: job {a} failed"
    assert jobs[chain[-1]].reason == \
        f"dependency never satisfied: job {chain[-2]} cancelled"
    assert {state(core, j) for j in chain[1:]} == {JobState.CANCELLED}
    assert state(core, rescue) is JobState.PENDING and not core.server.cluster.deps.blocks(rescue)


@core_test()
async def test_a_dependency_that_ends_while_the_dependant_is_being_stored_is_seen(core: Core):
    # the flake of tests/e2e/test_workflows.py (aftercorr): the jobs named by --dependency
    # ended while the new submission's transaction was committing, and their dependants then
    # waited for ends that had already happened, for ever
    await core.user_server("alice")
    (ok,) = await submit(core, "alice", ["true"])
    (bad,) = await submit(core, "alice", ["exit 1"])
    assert core.server.dispatcher.round() == 2
    journal = core.server.journal
    storing = journal.submission

    async def store_while_they_end(*args: Any, **kwargs: Any) -> None:
        end(core, "alice", ok)
        end(core, "alice", bad, exit_code=1)
        await storing(*args, **kwargs)

    journal.submission = store_while_they_end  # type: ignore[method-assign]
    (after_ok,) = await submit(core, "alice", ["true"],
                               dependencies=[DependencyRef("afterok", ok)])
    (after_bad,) = await submit(core, "alice", ["true"],
                                dependencies=[DependencyRef("afterok", bad)])
    journal.submission = storing  # type: ignore[method-assign]
    await core.committed()
    cluster = core.server.cluster
    assert not cluster.deps.blocks(after_ok) and state(core, after_ok) is JobState.PENDING
    assert core.server.dispatcher.round() == 1
    assert state(core, after_bad) is JobState.CANCELLED
    assert cluster.jobs[after_bad].reason == f"dependency never satisfied: job {bad} failed"


@core_test()
async def test_kill_on_invalid_dep_no_keeps_the_job_pending_with_the_reason(core: Core):
    await core.user_server("alice")
    (a,) = await submit(core, "alice", ["exit 1"])
    (b,) = await submit(core, "alice", ["true"], kill_on_invalid_dep=False,
                        dependencies=[DependencyRef("afterok", a)])
    core.server.dispatcher.round()
    end(core, "alice", a, exit_code=1)
    await core.committed()
    assert state(core, b) is JobState.PENDING
    assert core.server.cluster.jobs[b].reason == f"dependency never satisfied: job {a} failed"
    assert core.server.dispatcher.round() == 0


@core_test()
async def test_a_dependency_on_another_users_job_is_not_found_and_stores_nothing(core: Core):
    (bobs,) = await submit(core, "bob", ["true"])
    before = set(core.server.cluster.jobs)
    with pytest.raises(NotFound, match=f"no such job: {bobs}"):
        await submit(core, "alice", ["true"], dependencies=[DependencyRef("afterany", bobs)])
    assert set(core.server.cluster.jobs) == before
    assert core.rows(sa.select(sa.func.count()).select_from(job_dependencies))[0][0] == 0


@core_test()
async def test_the_owner_is_told_once_when_the_last_job_of_an_array_ended(core: Core):
    from hq.protocol.messages import SubmissionEnded

    peer = await core.user_server("alice")
    ids = await submit(core, "alice", ["true", "exit 1", "true"], indexes=True,
                       notify="echo done", notify_signature="s" * 64)
    assert core.server.dispatcher.round() == 2
    await peer.next(Run)
    end(core, "alice", ids[0])
    end(core, "alice", ids[1], exit_code=1)
    assert core.server.dispatcher.round() == 1
    await peer.next(Run)
    await core.committed()
    assert not [m for m in await peer.nothing_more() if isinstance(m, SubmissionEnded)]
    end(core, "alice", ids[2])
    told = await peer.next(SubmissionEnded)
    assert (told.array_id, told.counts, told.notify) == (ids[0], {"done": 2, "failed": 1},
                                                         "echo done")
    assert told.signature == "s" * 64
    await settle()
    assert not [m for m in await peer.nothing_more() if isinstance(m, SubmissionEnded)]


@core_test()
async def test_a_user_server_that_was_away_is_told_when_it_connects(core: Core):
    from hq.protocol.messages import SubmissionEnded

    (job,) = await submit(core, "alice", ["true"], hold=True, notify="true",
                          notify_signature="s" * 64)
    requests.cancel(core.server, core.session("alice"), requests.Cancel(ids=[job]))
    await core.committed()
    await settle(10)
    peer = await core.user_server("alice")
    core.server.notifier.connected("alice")   # as the listener does on registration
    told = await peer.next(SubmissionEnded)
    assert told.counts == {"cancelled": 1} and told.array_id == job


@core_test(hosts={"n1": 4, "n2": 4})
async def test_a_constraint_places_jobs_only_on_hosts_with_the_features(core: Core):
    from hq.errors import UsageError

    cluster = core.server.cluster
    cluster.hosts["n2"].features = frozenset({"avx512", "ssd"})
    cluster.hosts_changed()
    await core.user_server("alice")
    ids = await core.submit("alice", *["true"] * 6, constraint="avx512")
    assert core.server.dispatcher.round() == 4
    run = await core.peers["alice"].next(Run)
    assert run.host.name == "n2" and len(run.jobs) == 4
    info = (await requests.show(core.server, core.session("alice"), Show(id=ids[5]))).job
    assert info.constraint == "avx512" and info.state_reason == "waiting for 1 free core"
    # the jobs left waiting share one set of the hosts they may not use (memory: one set per
    # constraint, not one per job)
    left = [cluster.pending_view(cluster.jobs[i]) for i in ids[4:]]
    assert left[0].excluded_hosts == {"n1"} and left[0].excluded_hosts is left[1].excluded_hosts
    with pytest.raises(UsageError, match=r"no host has the feature\(s\) bigmem"):
        await core.submit("alice", "true", constraint="avx512&bigmem")


@core_test(hosts={"n1": 1})
async def test_a_high_priority_does_not_pass_another_users_jobs(core: Core):
    await core.user_server("alice")
    await core.user_server("bob")
    (bobs,) = await core.submit("bob", "true")
    alices = await core.submit("alice", "true", "true", priority=1000)
    (later,) = await core.submit("alice", "true")   # -p orders alice's own jobs only
    assert core.server.dispatcher.round() == 1
    assert state(core, bobs) is JobState.DISPATCHED
    assert {state(core, j) for j in [*alices, later]} == {JobState.PENDING}


@core_test(hosts={"n1": 4, "n2": 4})
async def test_gpu_jobs_never_share_a_device(core: Core):
    cluster = core.server.cluster
    cluster.hosts["n1"].gpus = ("GPU-a", "GPU-b")
    peer = await core.user_server("alice")
    ids = await core.submit("alice", *["true"] * 3, gpus=1)
    (plain,) = await core.submit("alice", "true")
    assert core.server.dispatcher.round() == 3   # two GPU jobs on n1, the plain one anywhere
    runs = [await peer.next(Run) for _ in range(2)]
    given = {j.id: j.gpus for run in runs for j in run.jobs}
    assert sorted(given[i][0] for i in ids[:2]) == ["GPU-a", "GPU-b"]
    assert given.get(plain) in ([], None)        # on n1: told it has none; on n2: no GPUs
    info = (await requests.show(core.server, core.session("alice"), Show(id=ids[2]))).job
    assert info.state_reason == "waiting for 1 free GPU"
    end(core, "alice", ids[0])
    assert core.server.dispatcher.round() == 1
    third = await peer.next(Run)
    assert [j.gpus for j in third.jobs] == [given[ids[0]]]   # the freed device, again
    from hq.errors import UsageError
    with pytest.raises(UsageError, match="asks for 3 GPU"):
        await core.submit("alice", "true", gpus=3)


@core_test(hosts={"n1": 1})
async def test_fair_share_remembers_past_usage_across_a_restart(core: Core):
    from hq.server.loading import load_state

    await core.user_server("alice")
    await core.user_server("bob")
    (heavy,) = await core.submit("alice", "true")
    assert core.server.dispatcher.round() == 1
    link = core.peers["alice"].link
    start = core.clock.now().timestamp()
    core.server.dispatcher.on_job_events(link, JobEvents(host="n1", events=[
        JobStarted(id=heavy, pid=4321, at=start),
        JobEnded(id=heavy, at=start + 7200, pid=4321, exit_code=0)]))   # two core-hours
    await core.committed()
    with core.engine.connect() as conn:
        cluster, _users = load_state(conn)   # what a restarted hq-server knows
    now = core.clock.now().timestamp() + 7200
    assert cluster.usage.of("alice", now) > 7000 and cluster.usage.of("bob", now) == 0
    (older,) = await core.submit("alice", "true")
    (newer,) = await core.submit("bob", "true")
    assert core.server.dispatcher.round() == 1
    assert state(core, newer) is JobState.DISPATCHED and state(core, older) is JobState.PENDING

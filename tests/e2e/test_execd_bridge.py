"""hq-exec-server through its bridge, as the user-server drives it: real daemon, real jobs.

Each test gets its own HOME (signing key, log) and HQPATH (so its own runtime directory and
daemon); every daemon a test started is killed at the end by the pid from its welcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from hq import auth, jobspec, protocol

REPO = Path(__file__).resolve().parents[2]
ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C"}
UMASK = 0o022

Message = dict[str, Any]


class Bridge:
    """``hq-exec-server --bridge`` as a subprocess, spoken to over its stdin/stdout."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hq.execd.main", "--bridge"], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._buffer = b""
        self._next_rid = 1
        self.events: list[Message] = []  # every JobEvent received, in order

    def hello(self, **settings: float) -> Message:
        # plain JSON objects, as any peer would write them: the frames' shapes are the contract
        self.send({"type": "hello", "version": protocol.PROTOCOL_VERSION, "role": "userd",
                   "program": "test", "settings": settings})
        welcome = self.receive()
        assert welcome is not None and welcome["type"] == "welcome", welcome
        return welcome

    def send(self, message: Message) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(protocol.encode(message))
        self.proc.stdin.flush()

    def receive(self, timeout: float = 10.0) -> Message | None:
        """The next message (job_events are also collected in ``events``); None at EOF."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            if len(self._buffer) >= 4:
                (length,) = struct.unpack(">I", self._buffer[:4])
                if len(self._buffer) >= 4 + length:
                    message = json.loads(self._buffer[4:4 + length])
                    self._buffer = self._buffer[4 + length:]
                    if message["type"] == "job_events":
                        self.events.extend(message["events"])
                    return message
            left = deadline - time.monotonic()
            assert left > 0, "no message from the exec-server in time"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    return None
                self._buffer += chunk

    def request(self, message: Message) -> Message:
        rid, self._next_rid = self._next_rid, self._next_rid + 1
        self.send({**message, "rid": rid})
        while (answer := self.receive()) is not None:
            if answer.get("rid") == rid:
                return answer
        raise AssertionError("bridge closed before the answer")

    def wait_event(self, job_id: int, event: str, timeout: float = 10.0) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            for seen in self.events:
                if seen["id"] == job_id and seen["event"] == event:
                    return seen
            assert self.receive(max(0.01, deadline - time.monotonic())) is not None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Host:
    """One user's view of a host: a HOME with a signing key, an HQPATH, bridges, daemons."""

    def __init__(self, tmp_path: Path) -> None:
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.env = {**os.environ, "HOME": str(tmp_path / "home"),
                    "HQPATH": str(tmp_path / "hq"), "PYTHONPATH": str(REPO)}
        (tmp_path / "home").mkdir()
        (tmp_path / "hq").mkdir()
        self.key = auth.load_signing_key(create=True)  # HOME is patched by the fixture
        self.owner = auth.user_name(os.geteuid())
        self.bridges: list[Bridge] = []
        self.daemons: set[int] = set()

    def bridge(self, **settings: float) -> tuple[Bridge, Message]:
        bridge = Bridge(self.env)
        self.bridges.append(bridge)
        welcome = bridge.hello(**settings)
        self.daemons.add(welcome["pid"])
        return bridge, welcome

    def run_message(self, job_id: int, command: str, *, sign: bool = True,
                    **spec_fields: Any) -> Message:
        spec = jobspec.JobSpec(command=command, cwd=str(self.work), **spec_fields)
        digest = jobspec.submission_digest(ENVIRONMENT, UMASK)
        key = self.key if sign else b"\x00" * 32
        wire = {**msgspec.to_builtins(spec), "signature": auth.sign_job(
            key, spec, self.owner, digest, database="", submission_id=5)}
        return {"type": "run", "owner": self.owner,
                "jobs": [{"id": job_id, "submission_id": 5, "spec": wire}],
                "submissions": {"5": {"environment": ENVIRONMENT, "umask": UMASK}}}

    def cleanup(self) -> None:
        for bridge in self.bridges:
            bridge.close()
        for pid in self.daemons:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # the runtime directory lives in /tmp, outside tmp_path
        shutil.rmtree(auth.runtime_dir(Path(self.env["HQPATH"])), ignore_errors=True)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    """A fresh HOME and installation; the test process uses the same HOME for the key."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    scene = Host(tmp_path)
    try:
        yield scene
    finally:
        scene.cleanup()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_signed_job_runs_and_reports_until_acknowledged(host: Host) -> None:
    bridge, welcome = host.bridge()
    assert welcome["host"] == os.uname().nodename
    assert welcome["user"] == host.owner and welcome["version"] == protocol.PROTOCOL_VERSION
    before = time.time()
    bridge.send(host.run_message(1, "echo hello from $HQ_JOB_ID on $HQ_HOST; exit 3"))
    started = bridge.wait_event(1, "started")
    ended = bridge.wait_event(1, "ended")
    assert started["pid"] == ended["pid"] and before <= started["at"] <= ended["at"]
    assert ended["started_at"] == started["at"]
    assert (ended["exit_code"], ended["signal"], ended["reason"]) == (3, None, None)
    assert ended["cpu_time_s"] >= 0 and ended["max_rss_kb"] > 0
    assert (host.work / "hq-1.out").read_text() == f"hello from 1 on {welcome['host']}\n"

    synced = bridge.request({"type": "sync"})
    assert synced["running"] == [] and synced["ended"] == [ended]
    bridge.send({"type": "ack", "ids": [1]})
    assert bridge.request({"type": "sync"}) == {"type": "reply", "rid": 2, "running": [],
                                                "ended": [], "queued": []}

    # the same id again, after its ack: never started twice
    (host.work / "hq-1.out").unlink()
    bridge.send(host.run_message(1, "echo again"))
    assert bridge.request({"type": "sync"})["ended"] == []
    assert not (host.work / "hq-1.out").exists()


def test_bad_signature_is_refused_and_never_runs(host: Host) -> None:
    bridge, _ = host.bridge()
    bridge.send(host.run_message(2, "echo should not run", sign=False))
    ended = bridge.wait_event(2, "ended")
    assert ended["reason"] == "refused: bad signature"
    assert ended["pid"] is None and ended["exit_code"] is None
    assert not (host.work / "hq-2.out").exists()
    assert not [e for e in bridge.events if e["event"] == "started"]
    log = (Path(host.env["HOME"]) / ".hq" / "log" / f"execd-{os.uname().nodename}.log")
    assert "WARNING hq.execd.service: job 2: refused: bad signature" in log.read_text()


def test_running_jobs_survive_the_bridge_and_can_be_cancelled(host: Host) -> None:
    first, welcome = host.bridge()
    first.send(host.run_message(3, "sleep 1.5; echo slept"))
    first.send(host.run_message(4, "sleep 60"))
    first.send(host.run_message(4, "echo duplicate"))  # a second run of a running id
    pid3 = first.wait_event(3, "started")["pid"]
    pid4 = first.wait_event(4, "started")["pid"]

    first.proc.send_signal(signal.SIGKILL)  # the user-server's link dies
    first.close()
    second, again = host.bridge()
    assert again["pid"] == welcome["pid"], "a second daemon was started"
    synced = second.request({"type": "sync"})
    assert sorted((r["id"], r["pid"]) for r in synced["running"]) == [(3, pid3), (4, pid4)]
    assert synced["ended"] == []
    assert second.wait_event(3, "ended")["exit_code"] == 0
    assert (host.work / "hq-3.out").read_text() == "slept\n"

    second.send({"type": "cancel", "ids": [4], "reason": "cancelled by test"})
    ended = second.wait_event(4, "ended")
    assert (ended["reason"], ended["signal"]) == ("cancelled", signal.SIGTERM)
    eventually(lambda: not alive(pid4), 5, "the cancelled job's process is still there")
    assert (host.work / "hq-4.out").read_text() == ""  # the duplicate never ran

    # the newest controller wins: a third bridge takes over and the second one is closed
    third, _ = host.bridge()
    while second.receive() is not None:
        pass  # a heartbeat may still be on its way before the end of the stream
    assert second.proc.wait(timeout=5) == 0
    assert third.request({"type": "sync"})["running"] == []


def test_daemon_exits_when_idle(host: Host) -> None:
    bridge, welcome = host.bridge(idle_timeout_s=0.5)
    bridge.send(host.run_message(5, "true"))
    bridge.wait_event(5, "ended")
    bridge.send({"type": "ack", "ids": [5]})
    bridge.request({"type": "sync"})  # the ack has been handled
    bridge.proc.stdin.close()  # type: ignore[union-attr]  # the user-server goes away
    assert bridge.proc.wait(timeout=5) == 0
    eventually(lambda: not alive(welcome["pid"]), 5, "the idle exec-server did not exit")
    socket_path = auth.runtime_dir(Path(host.env["HQPATH"])) / f"execd-{welcome['host']}.sock"
    assert not socket_path.exists()

"""hq.ssh against the test ground, run as a test user (ssh must use that user's own keys).

Each test runs a small probe script with this checkout's Python as hqalice or hqbob; the probe
prints one JSON line with what it saw. Tests about host keys give the probe a scratch HOME
(its own ~/.ssh with the user's key and a known_hosts made for the test), so the users' real
known_hosts stay as the test ground made them.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.testground import SshHosts, TwoUsers, UnixUser, popen_as, run_as

pytestmark = pytest.mark.root

PRELUDE = """\
import asyncio, json, statistics, sys, time
from hq.errors import Unavailable
from hq.ssh import SshTarget, open_remote_streams, open_ssh, start_remote
args = json.loads(sys.argv[1])
target = SshTarget(args["host"], args["address"])
"""

# open_ssh, then run argv with start_remote: {"stdout", "exit"} or {"error", "message"}
CONNECT_AND_RUN = """\
start = time.monotonic()
try:
    client = open_ssh(target, policy=args["policy"], connect_timeout=args["timeout"])
except Unavailable as err:
    result = {"error": type(err).__name__, "message": str(err)}
else:
    remote = start_remote(client, args["argv"])
    result = {"stdout": remote.channel.makefile("rb").read().decode(),
              "exit": remote.exit_status(10), "command": remote.command}
    client.close()
result["elapsed"] = time.monotonic() - start
print(json.dumps(result))
"""

# 100 request/answer exchanges of hq.protocol frames over one channel, through
# open_remote_streams and hq.protocol.Channel, with a remote frame echo
ECHO = """\
import struct, sys
i, o = sys.stdin.buffer, sys.stdout.buffer
while h := i.read(4):
    o.write(h + i.read(struct.unpack(">I", h)[0]))
    o.flush()
sys.stderr.write("echo: stdin ended")
"""
EXCHANGES = """\
from hq.protocol import Channel
async def main():
    t0 = time.perf_counter()
    client = open_ssh(target)
    t1 = time.perf_counter()
    reader, writer, close = await open_remote_streams(client, ["python3", "-c", args["echo"]])
    channel = Channel(reader, writer, "echo")
    times = []
    for n in range(args["n"]):
        start = time.perf_counter()
        channel.send({"type": "ping", "n": n, "pad": "x" * 200})
        await channel.drain()
        answer = json.loads(await channel.read_frame())
        times.append(time.perf_counter() - start)
        assert answer == {"type": "ping", "n": n, "pad": "x" * 200}, answer
    writer.close()                                  # EOF to the remote stdin: the echo ends
    end = await asyncio.wait_for(channel.read_frame(), 10)
    status = await asyncio.to_thread(writer.remote.exit_status, 10)
    close()
    client.close()
    return {"connect_ms": (t1 - t0) * 1e3, "first_ms": times[0] * 1e3,
            "median_ms": statistics.median(times[1:]) * 1e3, "max_ms": max(times[1:]) * 1e3,
            "end": end, "exit": status, "stderr": writer.remote.stderr_tail.decode()}
print(json.dumps(asyncio.run(main())))
"""

# a connection that goes silent (partition) must end the stream within seconds
SILENCE = """\
async def main():
    client = open_ssh(target)
    reader, writer, close = await open_remote_streams(client, ["sleep", "600"])
    print("ready", flush=True)
    sys.stdin.readline()                            # the test has partitioned the host
    start = time.monotonic()
    data = await asyncio.wait_for(reader.read(), 60)
    elapsed = time.monotonic() - start
    close()
    client.close()
    return {"data": data.decode(), "elapsed": elapsed}
print(json.dumps(asyncio.run(main())))
"""


def probe(user: UnixUser, code: str, hosts: SshHosts, i: int, *, home: Path | None = None,
          **args: Any) -> dict[str, Any]:
    """Run PRELUDE + ``code`` as ``user`` against hqnode<i>; the JSON it printed last."""
    args = {"host": hosts.name(i), "address": hosts.address(i), "policy": "reject",
            "timeout": 5.0, **args}
    env = {"HOME": str(home)} if home else None
    result = run_as(user, [sys.executable, "-c", PRELUDE + code, json.dumps(args)], env=env,
                    timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def scratch_home(test_users: TwoUsers) -> Iterator[Path]:
    """A HOME for hqalice with her ssh key and an empty ~/.ssh/known_hosts."""
    alice = test_users.alice
    home = Path(tempfile.mkdtemp(prefix="hq-ssh-home-", dir="/tmp"))
    try:
        (home / ".ssh").mkdir(mode=0o700)
        for name in ("id_ed25519", "id_ed25519.pub"):
            shutil.copy2(alice.home / ".ssh" / name, home / ".ssh" / name)
        (home / ".ssh" / "known_hosts").write_text("")
        for path in (home, home / ".ssh", *(home / ".ssh").iterdir()):
            shutil.chown(path, alice.uid, alice.gid)
        home.chmod(0o700)
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def known_line(hosts: SshHosts, address: str) -> str:
    """The test ground's known_hosts line for ``address``."""
    lines = [line for line in hosts.known_hosts.read_text().splitlines()
             if line.split()[0] == address]
    assert len(lines) == 1
    return lines[0]


def no_system_entry(address: str) -> None:
    system = Path("/etc/ssh/ssh_known_hosts")
    if system.exists():
        assert address not in system.read_text(), f"{system} already knows {address}"


def test_start_remote_runs_a_command(healthy_test_hosts: SshHosts, test_users: TwoUsers) -> None:
    for user in test_users:
        result = probe(user, CONNECT_AND_RUN, healthy_test_hosts, 1,
                       argv=["sh", "-c", "hostname; id -un"])
        assert result.get("error") is None, result
        assert result["stdout"].split() == ["hqnode1", user.name]
        assert result["exit"] == 0
        print(f"{user.name}: connect + auth + hostname in {result['elapsed'] * 1e3:.0f} ms")


def test_round_trips_over_one_channel(healthy_test_hosts: SshHosts,
                                      test_users: TwoUsers) -> None:
    result = probe(test_users.alice, EXCHANGES, healthy_test_hosts, 2, echo=ECHO, n=100)
    print(f"\nhq.ssh to hqnode2: connect+auth {result['connect_ms']:.1f} ms, first exchange "
          f"(remote python3 starting) {result['first_ms']:.1f} ms, then 99 exchanges over one "
          f"channel: median {result['median_ms']:.2f} ms, max {result['max_ms']:.2f} ms")
    assert result["end"] is None                   # a clean end of stream after our EOF
    assert result["exit"] == 0
    assert result["stderr"] == "echo: stdin ended"
    # Sanity only (measured ~0.2 ms here): far below the ~45 ms that a missing TCP_NODELAY
    # costs per exchange, so even a loaded machine passes.
    assert result["median_ms"] < 20


def test_unknown_host_key_is_rejected_with_the_fix(healthy_test_hosts: SshHosts,
                                                   test_users: TwoUsers,
                                                   scratch_home: Path) -> None:
    no_system_entry("10.200.0.12")
    result = probe(test_users.alice, CONNECT_AND_RUN, healthy_test_hosts, 2, home=scratch_home,
                   argv=["true"])
    assert result["error"] == "HostKeyUnknown", result
    message = result["message"]
    assert message.startswith("host hqnode2 (10.200.0.12): its ssh host key (ssh-ed25519 SHA256:")
    assert "not in your known_hosts" in message
    assert message.endswith("ssh-keyscan -t ed25519 10.200.0.12 >> ~/.ssh/known_hosts")
    assert (scratch_home / ".ssh" / "known_hosts").read_text() == ""


def test_accept_new_adds_an_unknown_key(healthy_test_hosts: SshHosts, test_users: TwoUsers,
                                        scratch_home: Path) -> None:
    no_system_entry("10.200.0.12")
    hosts, alice = healthy_test_hosts, test_users.alice
    added = probe(alice, CONNECT_AND_RUN, hosts, 2, home=scratch_home, policy="accept-new",
                  argv=["hostname"])
    assert added.get("error") is None, added
    assert added["stdout"].strip() == "hqnode2"
    known = (scratch_home / ".ssh" / "known_hosts").read_text()
    assert known.splitlines() == [known_line(hosts, "10.200.0.12")]
    # from now on the key is known: "reject" connects
    again = probe(alice, CONNECT_AND_RUN, hosts, 2, home=scratch_home, argv=["true"])
    assert again.get("error") is None, again


def test_changed_host_key_is_never_accepted(healthy_test_hosts: SshHosts,
                                            test_users: TwoUsers, scratch_home: Path) -> None:
    hosts = healthy_test_hosts
    # hqnode2's key under hqnode1's address: to hq, hqnode1's key has changed
    forged = "10.200.0.11 " + known_line(hosts, "10.200.0.12").split(None, 1)[1] + "\n"
    known_hosts = scratch_home / ".ssh" / "known_hosts"
    known_hosts.write_text(forged)
    for policy in ("reject", "accept-new"):
        result = probe(test_users.alice, CONNECT_AND_RUN, hosts, 1, home=scratch_home,
                       policy=policy, argv=["true"])
        assert result["error"] == "HostKeyChanged", result
        assert result["message"].startswith("host hqnode1 (10.200.0.11): its ssh host key has "
                                            "CHANGED")
        assert "ssh-keygen -R 10.200.0.11" in result["message"]
        assert known_hosts.read_text() == forged     # accept-new did not touch it


def test_login_without_an_authorized_key_fails(healthy_test_hosts: SshHosts,
                                               test_users: TwoUsers, scratch_home: Path) -> None:
    alice = test_users.alice
    for name in ("id_ed25519", "id_ed25519.pub"):
        (scratch_home / ".ssh" / name).unlink()
    keygen = run_as(alice, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(scratch_home / ".ssh" / "id_ed25519")])
    assert keygen.returncode == 0, keygen.stderr
    shutil.copy(healthy_test_hosts.known_hosts, scratch_home / ".ssh" / "known_hosts")
    result = probe(alice, CONNECT_AND_RUN, healthy_test_hosts, 1, home=scratch_home,
                   argv=["true"])
    assert result["error"] == "LoginFailed", result   # the user's problem, not the host's
    assert result["message"].startswith("host hqnode1 (10.200.0.11): ssh login as hqalice "
                                        "failed")


def test_partitioned_host_is_unavailable_within_the_timeout(healthy_test_hosts: SshHosts,
                                                            test_users: TwoUsers) -> None:
    hosts = healthy_test_hosts
    hosts.partition(3)
    try:
        result = probe(test_users.bob, CONNECT_AND_RUN, hosts, 3, timeout=2.0, argv=["true"])
    finally:
        hosts.heal(3)
    assert result["error"] == "Unavailable", result
    assert result["message"].startswith("host hqnode3 (10.200.0.13): ")
    assert "timed out" in result["message"] or "No route to host" in result["message"]
    print(f"partitioned host: Unavailable after {result['elapsed']:.2f} s (timeout 2 s)")
    assert result["elapsed"] < 2.0 + 5


def test_killed_sshd_is_refused_at_once(healthy_test_hosts: SshHosts,
                                        test_users: TwoUsers) -> None:
    healthy_test_hosts.kill(3)
    result = probe(test_users.bob, CONNECT_AND_RUN, healthy_test_hosts, 3, argv=["true"])
    assert result["error"] == "Unavailable", result
    assert result["message"] == ("host hqnode3 (10.200.0.13): ssh connection refused on port "
                                 "22 (is sshd running there?)")
    assert result["elapsed"] < 2


def test_mute_server_times_out_within_the_timeout(healthy_test_hosts: SshHosts,
                                                  test_users: TwoUsers) -> None:
    # Accepts TCP (the kernel does, from the backlog) but never sends an ssh banner: the
    # handshake must give up after connect_timeout in all, not after each of its phases.
    with socket.create_server(("10.200.0.1", 0)) as mute:
        port = mute.getsockname()[1]
        code = CONNECT_AND_RUN.replace(
            "open_ssh(target,", f"open_ssh(SshTarget('mute', '10.200.0.1', {port}),")
        result = probe(test_users.bob, code, healthy_test_hosts, 1, timeout=2.0, argv=["true"])
    assert result["error"] == "Unavailable", result
    assert result["message"] == "host mute (10.200.0.1): ssh handshake timed out after 2 s"
    assert result["elapsed"] < 2.0 + 3


def test_silent_connection_ends_within_seconds(healthy_test_hosts: SshHosts,
                                               test_users: TwoUsers) -> None:
    hosts = healthy_test_hosts
    args = {"host": hosts.name(3), "address": hosts.address(3)}
    proc = popen_as(test_users.bob, [sys.executable, "-c", PRELUDE + SILENCE, json.dumps(args)])
    try:
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            pytest.fail(f"the probe did not connect: {proc.communicate()[1]}")
        hosts.partition(3)
        started = time.monotonic()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=90)
    finally:
        hosts.heal(3)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    print(f"silent host noticed after {result['elapsed']:.1f} s "
          f"(keepalive 2 s, TCP_USER_TIMEOUT 3 s)")
    assert result["data"] == ""
    assert result["elapsed"] < 15
    assert time.monotonic() - started < 30


def test_argv_arrives_unchanged(healthy_test_hosts: SshHosts, test_users: TwoUsers) -> None:
    argv = ["plain", "two words", "it's", 'say "hi"', "a;b", "$(touch /tmp/hq-pwned)",
            "`id`", "$HOME", "line1\nline2", "back\\slash", "*", "", " lead", "tab\there",
            "--flag=x", "ünïcødé", "|&<>()#!"]
    code = "import sys, json; print(json.dumps(sys.argv[1:]))"
    result = probe(test_users.alice, CONNECT_AND_RUN, healthy_test_hosts, 1,
                   argv=["python3", "-c", code, *argv])
    assert result.get("error") is None, result
    assert json.loads(result["stdout"]) == argv
    assert not Path("/tmp/hq-pwned").exists()
    assert "$(touch" in result["command"]          # one shlex-quoted string, as sent

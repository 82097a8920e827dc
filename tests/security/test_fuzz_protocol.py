"""A bounded, structure-aware protocol fuzzer against hq-server, a user-server and an
exec-server: every daemon stays up and keeps serving the other users throughout.

Frames are built from the typed message definitions' examples (tests/unit/test_protocol.py)
and then broken: fields dropped or added, values of the wrong type, huge numbers, deep
nesting, invalid UTF-8, truncated frames, garbage. hqbob sends them to hq-server (as a
user-server and as an admin), to his own user-server and to his own exec-server; meanwhile
hqalice's jobs run. The figures are printed (frames, connections, crashes: 0).
"""

from __future__ import annotations

import json
import random
import struct
import tempfile
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.root

FRAMES_PER_TARGET = 400
SEED = 20261201


def _examples() -> list[dict]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from test_protocol import EXAMPLES

    return list(EXAMPLES.values())


DEEP = "@@deep@@"   # replaced by 50 to 5000 nested lists in the text (too deep to dump)


def _wrong_values(rng: random.Random) -> list[object]:
    deep = DEEP
    return ["x", "", 10**40, -(10**40), -1, 0, 1e308, True, None, [], {}, [1] * 1000,
            {"a": {"b": {"c": "d"}}}, "\udcff", "a" * 100_000, deep]


def mutate(rng: random.Random, example: dict) -> bytes:
    """One broken frame body (or a whole broken frame, marked by a leading b'RAW')."""
    frame = json.loads(json.dumps(example))
    how = rng.randrange(8)
    keys = [k for k in frame if k != "type"]
    if how == 0 and keys:
        del frame[rng.choice(keys)]
    elif how == 1:
        frame[rng.choice(["user", "uid", "admin", "x" * 50, "rid2"])] = rng.choice(
            _wrong_values(rng))
    elif how == 2 and keys:
        frame[rng.choice(keys)] = rng.choice(_wrong_values(rng))
    elif how == 3:
        frame["type"] = rng.choice(["hello", "welcome", "reply", "error", "admin", "", "run"])
    elif how == 4:
        body = json.dumps(frame).encode()
        cut = rng.randrange(1, len(body))
        return b"RAW" + struct.pack(">I", len(body)) + body[:cut]   # truncated frame
    elif how == 5:
        return b"RAW" + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    elif how == 6:
        body = json.dumps(frame).encode()
        i = rng.randrange(len(body))
        return body[:i] + b"\xff\xfe" + body[i:]    # invalid UTF-8
    body = json.dumps(frame, ensure_ascii=False).encode(errors="surrogatepass")
    depth = rng.choice([50, 500, 5000])
    return body.replace(f'"{DEEP}"'.encode(), b"[" * depth + b"1" + b"]" * depth)


SEND = r"""
import json, os, socket, struct, sys
frames = [bytes.fromhex(h) for h in json.load(open(sys.argv[1]))]
target, role = sys.argv[2], sys.argv[3]
sent = connections = 0
sock = None
for body in frames:
    if sock is None:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(2.0)
        try:
            sock.connect(target)
        except OSError:
            sock = None
            continue
        connections += 1
        hello = json.dumps({"type": "hello", "version": 2, "role": role,
                            "program": "fuzz"}).encode()
        try:
            sock.sendall(struct.pack(">I", len(hello)) + hello)
            sock.recv(65536)
        except OSError:
            sock.close()
            sock = None
            continue
    try:
        if body.startswith(b"RAW"):
            sock.sendall(body[3:])
            sock.close()
            sock = None
        else:
            sock.sendall(struct.pack(">I", len(body)) + body)
        sent += 1
        if sock is not None:
            sock.settimeout(0.05)
            try:
                if sock.recv(65536) == b"":
                    sock.close()
                    sock = None
            except socket.timeout:
                pass
    except OSError:
        sock.close()
        sock = None
print(json.dumps({"sent": sent, "connections": connections}))
"""


def test_broken_frames_crash_no_daemon_and_others_are_served(cluster_hq, capsys):
    hq = cluster_hq
    alice, bob = hq.users.alice, hq.users.bob
    rng = random.Random(SEED)
    examples = _examples()
    # bob's own daemons, to fuzz them too
    (warm,) = hq.submit_ids(bob, "-E", "hqnode2,hqnode3", "true", cwd=hq.workdir(bob))
    hq.wait_jobs([warm], {"done"})
    from hq.auth import installation_id

    runtime = Path(f"/tmp/hq-{bob.uid}") / installation_id(hq.root)
    execd_socket = next(runtime.glob("execd-*.sock"))
    server_socket = hq.root / "var" / "run" / "hq-server.sock"
    targets = [(str(server_socket), "userd"), (str(server_socket), "admin"),
               (str(runtime / "userd.sock"), "cli"), (str(execd_socket), "cli"),
               (str(execd_socket), "userd")]
    # bob's user-server is left out: the fuzzer's own hello as bob's user-server makes it
    # the newest one, and the old one steps down (as designed: bob replaces bob's daemon)
    daemons = {p.pid: " ".join(p.cmdline()) for p in hq.processes()
               if ("--daemon" in p.cmdline() or "hq.monitor.main" in " ".join(p.cmdline()))
               and not (p.uids().real == bob.uid and "hq.userd.main" in p.cmdline())}
    logs = [log for user in (alice, bob) for log in (user.home / ".hq" / "log").glob("*.log")]
    seen = {log: log.stat().st_size for log in logs}   # the homes outlive one test run
    total = {"frames": 0, "connections": 0}
    with tempfile.TemporaryDirectory() as scratch:
        for target, role in targets:
            frames = [mutate(rng, rng.choice(examples)) for _ in range(FRAMES_PER_TARGET)]
            path = Path(scratch) / "frames.json"
            path.write_text(json.dumps([f.hex() for f in frames]))
            path.chmod(0o644)
            Path(scratch).chmod(0o755)
            result = hq.run_python(bob, SEND, str(path), target, role)
            assert result.returncode == 0, result.stderr
            counts = json.loads(result.stdout)
            total["frames"] += counts["sent"]
            total["connections"] += counts["connections"]
            # the victim is served meanwhile
            (job_id,) = hq.submit_ids(alice, "true", cwd=hq.workdir(alice))
            hq.wait_jobs([job_id], {"done"}, timeout=60)
    crashed = [cmd for pid, cmd in daemons.items() if not psutil.pid_exists(pid)]
    with capsys.disabled():
        print(f"\nfuzz: {total['frames']} frames over {total['connections']} connections to "
              f"{len(targets)} targets; daemons crashed: {len(crashed)}")
    assert total["frames"] >= len(targets) * FRAMES_PER_TARGET // 2
    assert crashed == [], crashed
    assert hq.admin_cmd("status").returncode == 0
    for user in (alice, bob):
        for log in (user.home / ".hq" / "log").glob("*.log"):
            with open(log, "rb") as file:
                file.seek(seen.get(log, 0))
                assert b"Traceback" not in file.read(), log
    for log in (hq.root / "var" / "log").glob("*.log"):
        assert "Traceback" not in log.read_text(), log

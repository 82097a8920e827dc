"""A hostile user, or `nobody`, against hq-server's socket: nothing they send costs the server
more than a small, fixed amount, speaks for a host, or stalls the other users.

Each test reproduces an attack seen on the old hq-server with plain Unix sockets, as a real
second account (hqbob, or nobody), and checks that it fails while the victim (hqalice) and the
admin are served as usual: jobs still run, ``hq-admin status`` answers in under a second.
"""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa

from hq.db.model import hosts

pytestmark = pytest.mark.root

# Runs as the attacker: raw frames on hq-server's socket.
RAW = r"""
import json, socket, struct, sys, time
from hq.config import Installation, load_server
PATH = str(load_server(Installation.locate()).socket_path)

def frame(message):
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body

BUFFERS = {}   # socket -> bytes received beyond the last frame read

def read(sock, timeout=5.0):
    sock.settimeout(timeout)
    data = BUFFERS.pop(sock, b"")
    try:
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    except (socket.timeout, ConnectionError):
        return None
    size = struct.unpack(">I", data[:4])[0]
    BUFFERS[sock] = data[4 + size:]
    return json.loads(data[4:4 + size])

def connect():
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(PATH)
    return sock

def hello(sock, role="userd"):
    sock.sendall(frame({"type": "hello", "version": 2, "role": role, "program": "attacker"}))
    return read(sock)
"""


def attack(hq, user, script: str, *args: str) -> dict:  # type: ignore[no-untyped-def]
    result = hq.run_python(user, RAW + script, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def admin_answers_quickly(hq) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    result = hq.admin_cmd("status", "--json")
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    return elapsed


def victim_job_runs(hq) -> None:  # type: ignore[no-untyped-def]
    alice = hq.users.alice
    (job_id,) = hq.submit_ids(alice, "true", cwd=hq.workdir(alice))
    hq.wait_jobs([job_id], {"done"}, timeout=60)


def test_a_user_cannot_speak_for_hosts(cluster_hq):
    hq = cluster_hq
    victim_job_runs(hq)   # the hosts are up
    out = attack(hq, hq.users.bob, """
results = []
for message in (
        {"type": "heartbeat", "host": "hqnode1", "load1": 5e5, "free_memory_mb": 0},
        {"type": "heartbeat", "host": "hqnode1", "load1": "x"},
        {"type": "host_state", "host": "hqnode2", "state": "unreachable", "reason": "by bob"},
        {"type": "host_facts", "host": "hqnode3", "cores": 2, "cpu_busy": 1e5,
         "hq_daemons": 0, "load1": 1e5, "memory_mb": 1, "free_memory_mb": 0}):
    sock = connect()
    hello(sock)
    sock.sendall(frame(message))
    results.append(read(sock, 2.0))
    sock.close()
monitor = connect()
results.append(hello(monitor, role="monitor"))
print(json.dumps({"results": results}))
""")
    answers = out["results"]
    assert answers[0] is None        # a heartbeat's load is taken from nobody's exec-server
    assert answers[1]["code"] == "protocol" and "load1" in answers[1]["message"]
    assert answers[3]["code"] == "protocol"   # host facts: not a user-server's to send
    assert answers[4]["code"] == "permission_denied"   # nor is the monitor's role
    time.sleep(1.5)   # a monitor report comes every heartbeat interval
    view = hq.hosts_view()
    assert {name: view[name]["state"] for name in view} == {
        "hqnode1": "up", "hqnode2": "up", "hqnode3": "up"}
    assert all(h["load1"] is None or h["load1"] < 1000 for h in view.values())
    # bob's lie about hqnode2 holds for bob only
    assert admin_answers_quickly(hq) < 1.0
    victim_job_runs(hq)
    (row,) = hq.db_rows(sa.select(hosts.c.state).where(hosts.c.name == "hqnode2"))
    assert str(row.state) == "up"


def test_before_it_says_who_it_is_a_connection_costs_little(cluster_hq):
    hq = cluster_hq
    out = attack(hq, "nobody", """
opened, refused, answers = [], 0, {}
for _ in range(1100):            # more than the per-account limit
    try:
        opened.append(connect())
    except OSError:
        refused += 1
closed = 0
for sock in opened:
    sock.settimeout(0.2)
    try:
        if sock.recv(1) == b"":
            closed += 1
    except OSError:
        pass
for sock in opened:
    sock.close()
time.sleep(0.5)   # the server sees them go: the next ones are within the limit again
# a hello that claims a 64 MiB frame, one with a list as its role, one with a forged line
big = connect()
big.sendall(struct.pack(">I", 64 * 1024 * 1024) + b"x" * 1000)
answers["big"] = read(big)
bad = connect()
answers["list_role"] = hello(bad, role=["admin"])
forged = connect()
forged.sendall(frame({"type": "hello", "version": 2, "role": "userd\\njob 1: running -> "
                                                             "cancelled by admin"}))
answers["forged"] = read(forged)
print(json.dumps({"opened": len(opened), "refused": refused, "closed": closed,
                  "answers": answers}))
""")
    # beyond the limit the connections are closed at once, unread
    assert out["closed"] >= 1100 - 64 - out["refused"]
    # refused from its header, unread: before a hello, 64 KiB is all a frame may be
    assert out["answers"]["big"]["code"] == "protocol"
    assert "exceeds the limit of 65536" in out["answers"]["big"]["message"]
    assert out["answers"]["list_role"]["code"] == "protocol"
    assert "role" in out["answers"]["list_role"]["message"]
    assert admin_answers_quickly(hq) < 1.0
    victim_job_runs(hq)
    log = (hq.root / "var" / "log" / "hq-server.log").read_text()
    assert "\njob 1: running -> cancelled by admin" not in log    # no forged line
    assert log.count("connection(s) refused") < 50                # and no flood of lines


def test_huge_requests_are_refused_and_a_storm_is_slowed_for_its_sender_only(cluster_hq):
    hq = cluster_hq
    out = attack(hq, hq.users.bob, """
answers = {}
sock = connect()
hello(sock)
sock.sendall(frame({"type": "jobs", "rid": 1, "ids": list(range(1, 1_000_001))}))
answers["million_ids"] = read(sock, 10)
sock = connect()
hello(sock)
sock.sendall(frame({"type": "jobs", "rid": 2, "limit": 2_000_000}))
answers["huge_limit"] = read(sock, 10)
sock = connect()
hello(sock)
busy = 0
for rid in range(3, 1200):
    sock.sendall(frame({"type": "status", "rid": rid}))
for _ in range(3, 1200):
    answer = read(sock, 10)
    if answer and answer.get("code") == "busy":
        busy += 1
answers["busy"] = busy
print(json.dumps(answers))
""")
    assert out["million_ids"]["code"] == "protocol"
    assert "$.ids" in out["million_ids"]["message"]
    assert out["huge_limit"]["code"] == "protocol"
    assert out["busy"] > 0                 # bob's storm ran into his own limit
    assert admin_answers_quickly(hq) < 1.0
    victim_job_runs(hq)                    # alice's requests were not


def test_a_bad_environment_fails_only_its_submission(cluster_hq):
    hq = cluster_hq
    bob = hq.users.bob
    out = attack(hq, bob, """
sock = connect()
hello(sock)
job = {"command": "true", "cwd": "/tmp", "signature": "x"}
sock.sendall(frame(b'{"type": "submit", "rid": 1, "jobs": [{"command": "true", "cwd": "/tmp"}]'
                   b', "environment": {"A": "\\\\udcff"}, "umask": 18}'))
print(json.dumps({"answer": read(sock)}))
""")
    assert out["answer"]["code"] == "protocol"
    # a lone surrogate escape is no text: refused by the decoder, saying where
    assert "surrogate" in out["answer"]["message"] and "byte" in out["answer"]["message"]
    # through hq-submit: one line, no traceback
    result = hq.run(bob, "hq.cli.submit", "true")  # the environment below is bob's own
    assert result.returncode == 0, result.stderr
    bad = hq.run_python(bob, "import os, sys\nos.environb[b'LABEL'] = b'caf\\xe9'\n"
                             "from hq.cli.submit import main\nsys.argv = ['hq-submit', 'true']\n"
                             "main()\n")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "hq-submit: error: environment variable LABEL holds bytes that are not UTF-8: unset "
        "it or give it a UTF-8 value before submitting"]
    victim_job_runs(hq)

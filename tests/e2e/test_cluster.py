"""Many hosts and many users: jobs over ssh on the test hosts, as their owners, isolated."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import sqlalchemy as sa
from fixtures.running_hq import eventually

from hq.db.model import hosts, jobs

pytestmark = pytest.mark.root


def _host_of_jobs(hq, ids):
    rows = hq.db_rows(sa.select(jobs.c.id, hosts.c.name, jobs.c.state, jobs.c.restart_count)
                      .select_from(jobs.outerjoin(hosts, hosts.c.id == jobs.c.host_id))
                      .where(jobs.c.id.in_(ids)))
    return {r.id: (r.name, str(r.state), r.restart_count) for r in rows}


@pytest.mark.parametrize("cluster_hq", ["sqlite", "mariadb"], indirect=True)
def test_two_users_run_100_jobs_each_on_three_hosts_as_themselves(cluster_hq):
    hq = cluster_hq
    submitted = {}
    for user in hq.users:
        work = hq.workdir(user)
        jobs_file = work / "jobs.tab"
        jobs_file.write_text("command::id -un; hostname; sleep 0.2\n" * 100)
        os.chown(jobs_file, user.uid, user.gid)
        submitted[user.name] = (work, hq.submit_ids(user, "-f", str(jobs_file), cwd=work))
    all_ids = [i for _work, ids in submitted.values() for i in ids]
    hq.wait_jobs(all_ids, {"done", "failed", "cancelled"}, timeout=180)
    placed = _host_of_jobs(hq, all_ids)
    assert {state for _h, state, _r in placed.values()} == {"done"}
    assert {host for host, _s, _r in placed.values()} == {"hqnode1", "hqnode2", "hqnode3"}
    for user in hq.users:
        work, ids = submitted[user.name]
        for job_id in ids:
            out = work / f"hq-{job_id}.out"
            name, hostname = out.read_text().split()
            assert name == user.name
            assert hostname == placed[job_id][0]
            assert out.stat().st_uid == user.uid


def test_another_user_gets_no_such_job_for_everything(cluster_hq):
    hq = cluster_hq
    alice, bob = hq.users.alice, hq.users.bob
    work = hq.workdir(alice)
    (job_id,) = hq.submit_ids(alice, "--name", "secret-name", "echo secret; sleep 60", cwd=work)
    for args in (["show", str(job_id)], ["log", str(job_id)], ["cancel", str(job_id)],
                 ["hold", str(job_id)], ["release", str(job_id)], ["wait", str(job_id)],
                 ["details", str(job_id)]):
        result = hq.client(bob, *args)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        # the very answer a job id that does not exist gets
        assert re.search(r"no such job|not found", result.stdout + result.stderr), args
        assert "secret" not in result.stdout + result.stderr
    (array,) = hq.submit_ids(alice, "--hold", "--array", "1-2", "true", cwd=work)[:1]
    for args in (["update", str(array), "--cap", "1"], ["resubmit", str(array)],
                 ["show", f"{array}_1"], ["cancel", "--array", str(array)],
                 ["jobs", "--array", str(array)], ["progress", str(array)]):
        result = hq.client(bob, *args)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert re.search(r"no such|no unfinished array", result.stderr), (args, result.stderr)
    jobs_before = hq.db_rows(sa.select(sa.func.count()).select_from(jobs))[0][0]
    for dependency in (f"afterok:{job_id}", f"afterany:{array}", f"aftercorr:{array}",
                       f"afternotok:{array}_2"):
        result = hq.submit(bob, "--array", "1-2", "-d", dependency, "true",
                           cwd=hq.workdir(bob))
        assert result.returncode == 3, (dependency, result.stderr)
        assert "no such job" in result.stderr or "no array element" in result.stderr
    assert hq.db_rows(sa.select(sa.func.count()).select_from(jobs))[0][0] == jobs_before
    refused = hq.run(bob, "hq.cli.admin", "cancel", str(job_id), "--reason", "mine now")
    assert refused.returncode != 0 and "lacks the admin role" in refused.stderr
    listing = hq.client(bob, "jobs", "--all", "--json")
    assert job_id not in [j["id"] for j in json.loads(listing.stdout)["jobs"]]
    status = json.loads(hq.client(bob, "status", "--json").stdout)
    assert status["others"][alice.name]  # others' jobs only as counts
    assert "secret" not in json.dumps(status)
    assert hq.show(alice, job_id)["state"] in ("pending", "dispatched", "running")


FORGE = r"""
import json, socket, struct, sys
from hq.config import Installation, load_server
path = str(load_server(Installation.locate()).socket_path)

def frame(message):
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body

def read(sock):
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return json.loads(data[4:4 + struct.unpack(">I", data[:4])[0]])

def ask(request):
    # one connection per request: a frame hq-server refuses ends its connection
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.sendall(frame({"type": "hello", "version": 2, "role": "userd",
                            "program": "forger"}))
        welcome = read(sock)
        sock.sendall(frame({**request, "rid": 1}))
        return welcome["user"], read(sock)

job, victim = int(sys.argv[1]), sys.argv[2]
out = {}
for name, request in (("show_as", {"type": "show", "id": job, "user": victim}),
                      ("show", {"type": "show", "id": job}),
                      ("cancel_as", {"type": "cancel", "ids": [job], "user": victim}),
                      ("cancel", {"type": "cancel", "ids": [job]})):
    out["welcome_user"], out[name] = ask(request)
print(json.dumps(out))
"""


def test_a_forged_identity_field_changes_nothing(cluster_hq):
    hq = cluster_hq
    alice, bob = hq.users.alice, hq.users.bob
    (job_id,) = hq.submit_ids(alice, "sleep 60", cwd=hq.workdir(alice))
    result = hq.run_python(bob, FORGE, str(job_id), alice.name)
    out = json.loads(result.stdout)
    assert out["welcome_user"] == bob.name
    # a user name in a message is no field of any request: refused as a protocol error ...
    for forged in ("show_as", "cancel_as"):
        assert out[forged]["type"] == "error" and out[forged]["code"] == "protocol", out
        assert "unknown field `user`" in out[forged]["message"]
    # ... and without it bob's requests are about bob's jobs only
    assert (out["show"]["type"], out["show"]["code"]) == ("error", "not_found")
    assert out["cancel"]["results"] == [{"id": job_id, "result": "not found"}]
    assert hq.show(alice, job_id)["state"] in ("pending", "dispatched", "running")


def test_an_edited_job_in_the_database_is_refused(cluster_hq):
    hq = cluster_hq
    alice = hq.users.alice
    work = hq.workdir(alice)
    (job_id,) = hq.submit_ids(alice, "--hold", "echo harmless > ran.txt", cwd=work)
    # someone with write access to the database rewrites the command
    hq.stop_server()
    hq.write_db(sa.update(jobs).where(jobs.c.id == job_id)
                .values(command=f"echo tampered > {work}/tampered.txt"))
    hq.start_server()
    assert hq.client(alice, "release", str(job_id)).returncode == 0
    hq.wait_jobs([job_id], {"done", "failed", "cancelled"})
    info = hq.show(alice, job_id)
    assert info["state"] == "failed" and "signature" in info["state_reason"]
    # a job submitted afterwards has run on the same exec-servers: the refused one never did
    (later,) = hq.submit_ids(alice, "true", cwd=work)
    hq.wait_jobs([later], {"done"})
    assert not (work / "tampered.txt").exists() and not (work / "ran.txt").exists()


def test_odd_commands_and_names_run_exactly_as_typed(cluster_hq):
    hq = cluster_hq
    alice = hq.users.alice
    work = hq.workdir(alice)
    command = "printf '%s|' \"it's\" 'a;b' '$(id)' '`x`' 'new\nline'"
    name = "n'a;m$(e)\nx"
    (job_id,) = hq.submit_ids(alice, "--name", name, command, cwd=work)
    hq.wait_jobs([job_id], {"done", "failed"})
    info = hq.show(alice, job_id)
    assert info["state"] == "done" and info["name"] == name and info["command"] == command
    assert (work / f"hq-{job_id}.out").read_text() == "it's|a;b|$(id)|`x`|new\nline|"


def _job_log(work):
    """start/end lines the jobs wrote: job id -> list of (event, host, time)."""
    runs: dict[int, list[tuple[str, str, float]]] = {}
    for line in (work / "runs.log").read_text().splitlines():
        event, job_id, host, when = line.split()
        runs.setdefault(int(job_id), []).append((event, host, float(when)))
    return runs


def _check_runs(runs, victims, lost_host, lost_at):
    """Each job ran to its end once; a victim's first copy, on the lost host, never ended
    (it died with the host) and its second copy started only after the host was lost."""
    for job_id, events in runs.items():
        events = sorted(events, key=lambda e: e[2])
        if job_id not in victims:
            assert [e[0] for e in events] == ["start", "end"], (job_id, events)
            continue
        assert [e[0] for e in events] == ["start", "start", "end"], (job_id, events)
        assert events[0][1] == lost_host and events[1][1] != lost_host, (job_id, events)
        assert events[1][2] > lost_at, f"job {job_id} started again before its host was lost"


TRACED = ("echo start $HQ_JOB_ID $(hostname) $(date +%s.%N) >> {log}; sleep {secs}; "
          "echo end $HQ_JOB_ID $(hostname) $(date +%s.%N) >> {log}")


def _submit_traced(hq, user, work, count, secs):
    command = TRACED.format(log=work / "runs.log", secs=secs)
    return [hq.submit_ids(user, command, cwd=work)[0] for _ in range(count)]


@pytest.mark.parametrize("fault", ["kill", "crash"])
def test_a_lost_host_has_its_jobs_requeued_and_finished_elsewhere(cluster_hq, fault):
    hq = cluster_hq
    alice = hq.users.alice
    work = hq.workdir(alice)
    (once,) = hq.submit_ids(alice, "--no-requeue", "-E", "hqnode2,hqnode3", "sleep 30",
                            cwd=work)
    ids = _submit_traced(hq, alice, work, 5, 6)
    eventually(lambda: {s for _h, s, _r in _host_of_jobs(hq, [*ids, once]).values()}
               == {"running"}, timeout=60, what="all six jobs running")
    victims = [i for i, (h, _s, _r) in _host_of_jobs(hq, ids).items() if h == "hqnode1"]
    assert victims, "no job on hqnode1"
    lost_at = time.time()
    getattr(hq.hosts, fault)(1)
    faulted = time.monotonic()
    # the host is marked within the heartbeat timeout (3 s) plus a little
    eventually(lambda: hq.hosts_view()["hqnode1"]["state"] != "up", timeout=15,
               what="hqnode1 to be marked")
    assert time.monotonic() - faulted < 12
    hq.wait_jobs(ids, {"done", "failed"}, timeout=120)
    placed = _host_of_jobs(hq, ids)
    for job_id in ids:
        host, state, restarts = placed[job_id]
        assert state == "done"
        if job_id in victims:
            assert restarts == 1 and host != "hqnode1"
        else:
            assert restarts == 0
    reason = hq.hosts_view()["hqnode1"]["reason"]
    assert reason
    hq.wait_jobs([once], {"failed"}, timeout=30)   # --no-requeue: failed, not run again
    assert "lost" in hq.show(alice, once)["state_reason"]
    _check_runs(_job_log(work), set(victims), "hqnode1", lost_at)
    hq.hosts.boot(1)


def test_a_partition_healed_within_the_lease_loses_nothing(cluster_hq):
    hq = cluster_hq
    alice = hq.users.alice
    work = hq.workdir(alice)
    ids = _submit_traced(hq, alice, work, 6, 6)
    eventually(lambda: {s for _h, s, _r in _host_of_jobs(hq, ids).values()} == {"running"},
               timeout=60, what="all six jobs running")
    hq.hosts.partition(2)
    time.sleep(2.5)
    hq.hosts.heal(2)
    hq.wait_jobs(ids, {"done", "failed"}, timeout=60)
    placed = _host_of_jobs(hq, ids)
    assert {s for _h, s, _r in placed.values()} == {"done"}
    assert {r for _h, _s, r in placed.values()} == {0}, "a job was requeued"
    runs = _job_log(work)
    assert all(len(events) == 2 for events in runs.values())


def test_an_unknown_host_key_keeps_the_job_pending_with_the_reason(cluster_hq):
    hq = cluster_hq
    bob = hq.users.bob
    known = bob.known_hosts
    saved = known.read_text()
    address = hq.hosts.address(3)
    known.write_text("".join(line + "\n" for line in saved.splitlines()
                             if not line.startswith((address + " ", f"[{address}]"))))
    try:
        work = hq.workdir(bob)
        (stuck,) = hq.submit_ids(bob, "-E", "hqnode1,hqnode2", "hostname", cwd=work)
        (fine,) = hq.submit_ids(bob, "-E", "hqnode3", "hostname", cwd=work)
        hq.wait_jobs([fine], {"done"})

        def reason_shown() -> bool:
            info = hq.show(bob, stuck)
            return info["state"] == "pending" and "known_hosts" in (info["state_reason"] or "")
        try:
            eventually(reason_shown, timeout=20, what="the host key reason")
        except AssertionError:
            raise AssertionError(hq.show(bob, stuck)) from None
        assert re.search(r"hqnode3", hq.show(bob, stuck)["state_reason"])
        # the host is fine for everybody else
        (other,) = hq.submit_ids(hq.users.alice, "-E", "hqnode1,hqnode2", "hostname",
                                 cwd=hq.workdir(hq.users.alice))
        hq.wait_jobs([other], {"done"})
    finally:
        known.write_text(saved)


def test_hq_submit_on_a_compute_host_reaches_the_user_server_over_ssh(cluster_hq, head_sshd):
    import shlex
    import sys

    from fixtures.testground import run_as

    hq = cluster_hq
    alice = hq.users.alice
    work = hq.workdir(alice)
    remote = shlex.join(["env", f"HQPATH={hq.root}", sys.executable, "-P", "-m",
                         "hq.cli.submit", "--parsable", "--cwd", str(work),
                         "hostname > where.txt; id -un >> where.txt"])
    result = run_as(alice, ["ssh", "-o", "BatchMode=yes", hq.hosts.address(2), remote],
                    timeout=60)
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.strip())
    hq.wait_jobs([job_id], {"done", "failed"})
    host, user = (work / "where.txt").read_text().split()
    assert user == alice.name and host.startswith("hqnode")
    assert hq.show(alice, job_id)["state"] == "done"
    # it went over ssh to hq-server's host (the head's sshd saw alice come from hqnode2)
    head_log = (hq.hosts.state_dir / "head" / "sshd.log").read_text()
    assert f"Accepted publickey for {alice.name} from {hq.hosts.address(2)}" in head_log


def test_a_partition_longer_than_the_lease_never_runs_a_job_twice_at_once(cluster_hq):
    hq = cluster_hq
    alice = hq.users.alice
    work = hq.workdir(alice)
    log = work / "runs.log"
    stamp = "$HQ_JOB_ID $(hostname) $(date +%s.%N)"
    command = (f"trap 'echo killed {stamp} >> {log}; exit 1' TERM; "
               f"echo start {stamp} >> {log}; sleep 25 & wait; echo end {stamp} >> {log}")
    (job_id,) = hq.submit_ids(alice, "-E", "hqnode3", command, cwd=work)
    eventually(lambda: hq.show(alice, job_id)["state"] == "running", timeout=30,
               what="the job to run")
    first_host = hq.show(alice, job_id)["host"]
    index = int(first_host.removeprefix("hqnode"))
    hq.hosts.partition(index)
    try:
        # the exec-server there kills it when its lease (6 s) runs out; hq-server requeues it
        # only after the lease and its grace (8 s), and it starts again on the other host
        eventually(lambda: hq.show(alice, job_id)["restart_count"] == 1, timeout=30,
                   what="the job to be requeued")

        def runs() -> list[list[str]]:
            return [line.split() for line in log.read_text().splitlines()]

        eventually(lambda: any(e[0] == "start" and e[2] != first_host for e in runs()),
                   timeout=30, what="the second copy to start")
    finally:
        hq.hosts.heal(index)
    events = runs()
    killed = [float(e[3]) for e in events if e[0] == "killed" and e[2] == first_host]
    assert killed, f"the partitioned copy was not killed by its lease: {events}"
    second = [float(e[3]) for e in events if e[0] == "start" and e[2] != first_host]
    assert second[0] > killed[0], "the second copy started before the first was killed"
    assert hq.show(alice, job_id)["host"] != first_host


def test_a_lost_host_requeues_its_queued_jobs_without_a_restart(cluster_hq):
    hq = cluster_hq
    alice = hq.users.alice
    work = hq.workdir(alice)
    # (an earlier test may have lost and booted it: wait until it takes jobs again)
    eventually(lambda: hq.hosts_view()["hqnode1"]["state"] == "up", timeout=30,
               what="hqnode1 to be up")
    (probe,) = hq.submit_ids(alice, "-E", "hqnode2,hqnode3", "true", cwd=work)
    hq.wait_jobs([probe], {"done"}, timeout=60)
    # six quick jobs first: their run times let the sleeping ones be queued ahead
    jobs_file = work / "jobs.tab"
    jobs_file.write_text("command::true\n" * 6 + "".join(
        f"command::{TRACED.format(log=work / 'runs.log', secs=4)}\n" for _ in range(24)))
    os.chmod(jobs_file, 0o644)
    ids = hq.submit_ids(alice, "-f", str(jobs_file), cwd=work)
    sleepers = ids[6:]

    def placed_on_node1() -> tuple[set[int], set[int]]:
        placed = _host_of_jobs(hq, sleepers)
        return ({i for i, (h, s, _r) in placed.items() if h == "hqnode1" and s == "running"},
                {i for i, (h, s, _r) in placed.items() if h == "hqnode1" and s == "dispatched"})

    eventually(lambda: all(len(group) > 0 for group in placed_on_node1()), timeout=60,
               what="jobs running and queued on hqnode1")
    running, queued = placed_on_node1()
    lost_at = time.time()
    hq.hosts.kill(1)
    hq.wait_jobs(ids, {"done", "failed"}, timeout=150)
    placed = _host_of_jobs(hq, ids)
    assert {s for _h, s, _r in placed.values()} == {"done"}
    runs = _job_log(work)
    started_there = {i for i in sleepers if any(h == "hqnode1" for _e, h, _t in runs[i])}
    assert running <= started_there
    for job_id in sleepers:
        host, _state, restarts = placed[job_id]
        # a job that had started there ran again elsewhere (one restart); one that only
        # waited there never started there: requeued with no restart counted
        if job_id in started_there:
            assert restarts == 1 and host != "hqnode1", (job_id, placed[job_id])
        else:
            assert restarts == 0, (job_id, placed[job_id])
    assert queued - started_there, "no queued job was still waiting when the host died"
    _check_runs({i: runs[i] for i in sleepers}, started_there, "hqnode1", lost_at)
    hq.hosts.boot(1)


def test_the_admin_cancels_another_users_running_job_with_a_reason(cluster_hq):
    hq = cluster_hq
    alice = hq.users.alice
    (job_id,) = hq.submit_ids(alice, "sleep 120", cwd=hq.workdir(alice))
    hq.wait_jobs([job_id], {"running"})
    result = hq.admin_cmd("cancel", str(job_id), "--reason", "host maintenance")
    assert result.returncode == 0, result.stderr
    assert f"job {job_id} ({alice.name}): cancelling" in result.stdout
    hq.wait_jobs([job_id], {"cancelled"})
    info = hq.show(alice, job_id)
    assert info["state_reason"] == f"cancelled by admin {hq.admin.name}: host maintenance"


def test_a_constraint_only_one_host_meets_places_every_such_job_there(cluster_hq):
    hq = cluster_hq
    alice = hq.users.alice
    featured = {r.name for r in hq.db_rows(sa.select(hosts.c.name, hosts.c.features))
                if "avx512" in r.features.split(",")}
    assert len(featured) == 1
    ids = hq.submit_ids(alice, "--array", "1-6", "-C", "avx512", "sleep 0.2",
                        cwd=hq.workdir(alice))
    hq.wait_jobs(ids, {"done", "failed", "cancelled"})
    hosts_used = {hq.show(alice, i)["host"] for i in ids}
    assert hosts_used == featured
    refused = hq.submit(alice, "-C", "gpu", "true", cwd=hq.workdir(alice))
    assert refused.returncode == 2 and "no host has the feature(s) gpu" in refused.stderr

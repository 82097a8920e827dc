"""hq-server's word alone runs nothing twice; ids never mix across databases; a cancel or a
lease leaves no process behind (on both backends, real daemons).

The database is the attacker's tool here: whoever can write it (a compromised hq-server, an
admin's mistake) copies a finished job's row, or recreates the database under running
daemons. The user-server's ledger and signatures, and the database identity, hold.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import sqlalchemy as sa
from fixtures.running_hq import eventually, wait_gone

from hq.config import load_database
from hq.db.engine import create_engine
from hq.db.model import jobs, submissions


def _copy_row(hq, job_id: int, new_id: int, **changes: object) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(load_database(hq.inst))
    try:
        with engine.begin() as conn:
            row = dict(conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().one())
            row.update(id=new_id, state="pending", pid=None, exit_code=None, host_id=None,
                       started_at=None, ended_at=None, state_reason=None, **changes)
            conn.execute(sa.insert(jobs).values(**row))
    finally:
        engine.dispose()


def _copy_submission(hq, sub_id: int, new_id: int) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(load_database(hq.inst))
    try:
        with engine.begin() as conn:
            row = dict(conn.execute(sa.select(submissions).where(submissions.c.id == sub_id))
                       .mappings().one())
            conn.execute(sa.insert(submissions).values(**{**row, "id": new_id}))
    finally:
        engine.dispose()


def test_a_finished_job_copied_in_the_database_does_not_run_again(running_hq):
    hq = running_hq
    runs = hq.workdir / "runs"
    first = hq.submit_id("-o", "/dev/null", f"echo ran >> {runs}")
    assert hq.wait_for(first, {"done", "failed"})["state"] == "done"
    sub = hq.show(first)["submission_id"]
    hq.stop_server()
    # under a new job id in the same submission: the signature still verifies ...
    _copy_row(hq, first, first + 100)
    # ... and into another submission: it does not
    _copy_submission(hq, sub, sub + 100)
    _copy_row(hq, first, first + 101, submission_id=sub + 100)
    hq.start_server()
    hq.client("status")   # the user-server comes back, and the copies are dispatched
    replayed = hq.wait_for(first + 100, {"done", "failed"})
    moved = hq.wait_for(first + 101, {"done", "failed"})
    assert replayed["state"] == "failed" and "it has run already" in replayed["state_reason"]
    assert moved["state"] == "failed" and "bad signature" in moved["state_reason"]
    assert runs.read_text() == "ran\n"     # once, and only once


def test_an_array_signed_as_a_whole_runs_only_the_indexes_it_was_signed_for(running_hq):
    hq = running_hq
    runs = hq.workdir / "runs"
    ids = [int(i) for i in hq.submit("--parsable", "--hold", "--array", "1-3", "-o",
                                     "/dev/null", f"echo $HQ_ARRAY_INDEX >> {runs}"
                                     ).stdout.split()]
    assert len(ids) == 3
    hq.stop_server()
    engine = create_engine(load_database(hq.inst))
    try:
        with engine.begin() as conn:   # one signature for the array: another index is not in it
            conn.execute(sa.update(jobs).where(jobs.c.id == ids[1]).values(array_index=7))
            assert conn.execute(sa.select(submissions.c.array_indexes).where(
                submissions.c.first_job_id == ids[0])).scalar() == "1-3"
    finally:
        engine.dispose()
    hq.start_server()
    assert hq.client("release", f"{ids[0]}-{ids[2]}").returncode == 0
    ends = {i: hq.wait_for(i, {"done", "failed"}) for i in ids}
    assert [ends[i]["state"] for i in ids] == ["done", "failed", "done"]
    assert "bad signature" in ends[ids[1]]["state_reason"]
    assert sorted(runs.read_text().split()) == ["1", "3"]


def test_a_recreated_database_never_confuses_a_running_exec_server(running_hq):
    hq = running_hq
    first = hq.submit_id("-o", "/dev/null", "true")
    assert hq.wait_for(first, {"done"})["state"] == "done"
    execd = hq.daemon("hq.execd.main")
    hq.stop_server()
    assert hq.dbadmin("--drop-tables", "--yes").returncode == 0
    assert hq.dbadmin("-C", "-a").returncode == 0
    hq.start_server()
    # ids start at 1 again; the exec-server that ran job 1 of the old database is still there
    again = hq.submit_id("-o", "/dev/null", "echo new > new.txt")
    assert again == first
    assert hq.wait_for(again, {"done", "failed"}, timeout=60)["state"] == "done"
    assert (hq.workdir / "new.txt").read_text() == "new\n"
    assert hq.daemon("hq.execd.main").pid == execd.pid
    # and a cancel reaches it
    long = hq.submit_id("sleep 300")
    info = hq.wait_for(long, {"running"})
    assert hq.client("cancel", str(long)).returncode == 0
    assert hq.wait_for(long, {"cancelled"})["state"] == "cancelled"
    eventually(lambda: not psutil.pid_exists(info["pid"]), what="the cancelled job to end")


def _marked(hq, job_id: int) -> list[int]:  # type: ignore[no-untyped-def]
    """The live processes of ``job_id`` (any attempt), by their marker."""
    from hq.auth import installation_id
    from hq.execd.processes import MARKER, parse_marker

    found, ours = [], installation_id(hq.inst.root)
    for proc in psutil.process_iter():
        try:
            parsed = parse_marker(proc.environ().get(MARKER, ""))
            if parsed is None or parsed[0] != ours or parsed[1][1] != job_id:
                continue
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def test_cancel_leaves_no_process_of_a_job_that_double_forked(running_hq):
    hq = running_hq
    job_id = hq.submit_id("-o", "/dev/null", "(setsid sleep 1000 &); nohup sleep 1000 "
                          "> /dev/null 2>&1 & sleep 1000")
    hq.wait_for(job_id, {"running"})
    eventually(lambda: len(_marked(hq, job_id)) >= 3, what="the job's processes")
    assert hq.client("cancel", str(job_id)).returncode == 0
    hq.wait_for(job_id, {"cancelled"})
    eventually(lambda: not _marked(hq, job_id), timeout=15,
               what="every process of the cancelled job to end")


def test_a_killed_exec_servers_job_dies_with_its_lease_before_it_runs_again(running_hq):
    hq = running_hq
    (hq.inst.etc / "hq-server.cfg").write_text(
        "[server]\nheartbeat_interval = 0.5\nheartbeat_timeout = 3\nlease = 4\n"
        "lease_grace = 2\nuser_server_idle_timeout = 600\nexec_server_idle_timeout = 600\n"
        "[scheduler]\nload_factor = 100\n")
    hq.stop_server()
    for proc in hq.processes():
        proc.kill()
    hq.start_server()
    log = hq.workdir / "copies"
    job_id = hq.submit_id("-o", "/dev/null", f"echo start $$ $(date +%s.%N) >> {log}; "
                          f"(setsid sleep 1000 &); sleep 1000")
    info = hq.wait_for(job_id, {"running"})
    old_processes = _marked(hq, job_id)
    # every user daemon dies at once: nobody renews the lease, nobody watches the job
    for module in ("hq.userd.main", "hq.execd.main"):
        daemon = hq.daemon(module)
        daemon.send_signal(signal.SIGKILL)
        wait_gone(daemon.pid)
    assert psutil.pid_exists(info["pid"])
    time.sleep(8)   # past the lease and its grace: hq-server requeues the job
    # the next command brings a user-server, which starts an exec-server: it finds the old
    # copy, whose lease ran out, and kills it before the requeued copy starts
    assert hq.client("status").returncode == 0
    requeued = hq.wait_for(job_id, {"running"}, timeout=60)
    assert requeued["restart_count"] == 1
    eventually(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status()
                               != psutil.STATUS_ZOMBIE for p in old_processes),
               what="the old copy to be gone")
    starts = [line.split() for line in log.read_text().splitlines()]
    assert len(starts) == 2
    execd_log = (hq.home / ".hq" / "log" / f"execd-{os.uname().nodename}.log").read_text()
    assert f"job {job_id}: its lease had run out (left by the previous exec-server)" in execd_log
    hq.client("cancel", str(job_id))

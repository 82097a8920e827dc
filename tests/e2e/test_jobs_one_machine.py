"""A user's jobs on one machine, through the real programs: submit, follow, cancel, output."""

from __future__ import annotations

import json
import os
import sys

import psutil
import pytest
import sqlalchemy as sa
from fixtures.running_hq import eventually

from hq.config import load_database
from hq.db.engine import create_engine
from hq.db.model import events, jobs


def test_a_job_runs_in_its_directory_with_its_environment_and_umask(running_hq):
    hq = running_hq
    (hq.workdir / "sub").mkdir()
    # an umask no daemon has by accident: the job must get the submitter's
    job_id = hq.submit_id("--name", "envcheck",
                          'pwd; echo "X=$X"; umask; echo "ID=$HQ_JOB_ID"; id -un; echo err >&2;'
                          ' touch made-by-job',
                          cwd=hq.workdir / "sub", X="forty two", umask=0o027)
    info = hq.wait_for(job_id, {"done", "failed"})
    assert info["state"] == "done", info
    out = (hq.workdir / "sub" / f"hq-{job_id}.out").read_text().splitlines()
    assert out[0] == str(hq.workdir / "sub")
    assert out[1] == "X=forty two"
    assert out[2] == "0027"
    assert (hq.workdir / "sub" / "made-by-job").stat().st_mode & 0o777 == 0o640
    assert out[3] == f"ID={job_id}"
    assert out[4] == psutil.Process().username()
    assert (hq.workdir / "sub" / f"hq-{job_id}.err").read_text() == "err\n"
    assert info["exit_code"] == 0 and info["host"] == "localhost"
    assert info["started_at"] >= info["submitted_at"] and info["ended_at"] >= info["started_at"]

    (row,) = hq.db_rows(sa.select(jobs.c.state, jobs.c.exit_code, jobs.c.pid, jobs.c.started_at,
                                  jobs.c.ended_at, jobs.c.cpu_time_s, jobs.c.max_rss_kb,
                                  jobs.c.host_id).where(jobs.c.id == job_id))
    assert row.state == "done" and row.exit_code == 0 and row.pid > 0
    assert row.started_at <= row.ended_at and row.host_id is not None
    assert row.cpu_time_s is not None and row.max_rss_kb > 0
    transitions = [(r.old_state, r.new_state) for r in hq.db_rows(
        sa.select(events.c.old_state, events.c.new_state)
        .where(events.c.job_id == job_id, events.c.old_state.is_not(None))
        .order_by(events.c.id))]
    assert transitions == [("pending", "dispatched"), ("dispatched", "running"),
                           ("running", "done")]


def test_submit_wait_exits_with_the_job_exit_code(running_hq):
    result = running_hq.submit("--wait", "exit 3")
    assert result.returncode == 3, result.stderr
    ok = running_hq.submit("--wait", "true")
    assert ok.returncode == 0, ok.stderr


def test_output_files_where_asked(running_hq):
    hq = running_hq
    (hq.workdir / "out").mkdir()  # hq opens output files; it makes no directories
    job_id = hq.submit_id("-o", "out/%j.txt", "-O", "out/%j.txt", "echo to-out; echo to-err >&2")
    info = hq.wait_for(job_id, {"done", "failed"})
    assert info["state"] == "done", info
    text = (hq.workdir / "out" / f"{job_id}.txt").read_text()
    assert sorted(text.split()) == ["to-err", "to-out"]
    assert info["stdout"] == str(hq.workdir / "out" / f"{job_id}.txt")
    missing = hq.submit_id("-o", "nowhere/%j.txt", "true")
    failed = hq.wait_for(missing, {"done", "failed"})
    assert failed["state"] == "failed"
    assert "cannot start" in failed["state_reason"] and "nowhere" in failed["state_reason"]


def test_cancel_kills_the_whole_process_tree(running_hq):
    hq = running_hq
    marker = hq.workdir / "pids"
    job_id = hq.submit_id(f"sleep 300 & echo $! > {marker}; sleep 300")
    info = hq.wait_for(job_id, {"running"})
    eventually(lambda: marker.exists() and marker.read_text().strip() != "", what="child pid")
    child = int(marker.read_text())
    leader = info["pid"]
    assert psutil.pid_exists(child) and psutil.pid_exists(leader)

    result = hq.client("cancel", str(job_id))
    assert result.returncode == 0, result.stderr
    info = hq.wait_for(job_id, {"cancelled", "failed", "done"})
    assert info["state"] == "cancelled"

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    eventually(lambda: gone(child) and gone(leader), what="the job's processes to end")


def test_cancel_a_pending_job_takes_it_out_of_the_queue(running_hq):
    hq = running_hq
    assert hq.admin("deactivate").returncode == 0
    job_id = hq.submit_id("echo should-not-run > never.txt")
    info = hq.show(job_id)
    assert info["state"] == "pending" and "deactivated" in info["state_reason"]
    assert hq.client("cancel", str(job_id)).returncode == 0
    assert hq.show(job_id)["state"] == "cancelled"
    assert hq.admin("activate").returncode == 0
    # a job submitted after it ran to its end: rounds have run with the cancelled one queued
    later = hq.submit_id("true")
    assert hq.wait_for(later, {"done", "failed"})["state"] == "done"
    assert not (hq.workdir / "never.txt").exists()
    assert hq.show(job_id)["state"] == "cancelled"


def test_a_job_killed_by_a_signal_is_failed_with_the_signal(running_hq):
    hq = running_hq
    job_id = hq.submit_id("sleep 300")
    info = hq.wait_for(job_id, {"running"})
    os.kill(info["pid"], 9)
    info = hq.wait_for(job_id, {"failed", "done", "cancelled"})
    assert info["state"] == "failed"
    assert info["signal"] == 9 and info["exit_code"] is None


def test_hold_and_release(running_hq):
    hq = running_hq
    job_id = hq.submit_id("--hold", "echo released > released.txt")
    assert hq.show(job_id)["state"] == "held"
    # another job passes it: the held one is not scheduled
    other = hq.submit_id("true")
    assert hq.wait_for(other, {"done", "failed"})["state"] == "done"
    assert hq.show(job_id)["state"] == "held"
    assert not (hq.workdir / "released.txt").exists()
    assert hq.client("release", str(job_id)).returncode == 0
    assert hq.wait_for(job_id, {"done", "failed"})["state"] == "done"
    assert (hq.workdir / "released.txt").read_text() == "released\n"


def test_jobs_file_submits_every_line_with_its_index(running_hq):
    hq = running_hq
    jobs_file = hq.workdir / "jobs.tab"
    jobs_file.write_text("# three tasks\n"
                         "command::echo task {idx} > task-{idx}.txt\tgroup::batch\n"
                         "command::echo task {idx} > task-{idx}.txt\tpriority::5\n"
                         "\n"
                         "command::echo task {idx} > task-{idx}.txt\n")
    result = hq.submit("-f", str(jobs_file), "--json")
    assert result.returncode == 0, result.stderr
    ids = json.loads(result.stdout)["ids"]
    assert len(ids) == 3
    for job_id in ids:
        assert hq.wait_for(job_id, {"done", "failed"})["state"] == "done"
    assert sorted(p.name for p in hq.workdir.glob("task-*.txt")) == \
        ["task-2.txt", "task-3.txt", "task-5.txt"]
    assert (hq.workdir / "task-5.txt").read_text() == "task 5\n"


def test_status_and_jobs_list_own_jobs(running_hq):
    hq = running_hq
    first = hq.submit_id("true")
    hq.wait_for(first, {"done"})
    status = json.loads(hq.client("status", "--json").stdout)
    assert status["mine"].get("done", 0) >= 1
    listing = json.loads(hq.client("jobs", "--all", "--json").stdout)
    assert first in [j["id"] for j in listing["jobs"]]


def test_hq_submit_inside_a_job_reaches_the_user_server_through_the_exec_server(running_hq):
    hq = running_hq
    inner = f"{sys.executable} -P -m hq.cli.submit --parsable 'echo inner > inner.txt'"
    outer = hq.submit_id(f"{inner} > inner_id.txt")
    assert hq.wait_for(outer, {"done", "failed"})["state"] == "done"
    inner_id = int((hq.workdir / "inner_id.txt").read_text())
    assert hq.wait_for(inner_id, {"done", "failed"})["state"] == "done"
    assert (hq.workdir / "inner.txt").read_text() == "inner\n"
    # it went through the exec-server that ran the outer job
    (log,) = (hq.home / ".hq" / "log").glob("execd-*.log")
    assert "relaying for a command inside a job" in log.read_text()


def test_logfile_gets_hqs_notes_on_the_job(running_hq):
    hq = running_hq
    job_id = hq.submit_id("-l", "notes-%j.log", "exit 4")
    assert hq.wait_for(job_id, {"done", "failed"})["state"] == "failed"
    started, ended = (hq.workdir / f"notes-{job_id}.log").read_text().splitlines()
    assert started.startswith(f"job {job_id}: started on ") and ", pid " in started
    assert ended.startswith(f"job {job_id}: ended at ") and "exit code 4" in ended
    assert "cpu " in ended and "peak memory" in ended


def test_dbadmin_check_finds_a_job_row_edited_behind_hq(running_hq):
    hq = running_hq
    ids = [hq.submit_id("true") for _ in range(3)]
    for job_id in ids:
        assert hq.wait_for(job_id, {"done", "failed"})["state"] == "done"
    clean = hq.dbadmin("check")
    assert clean.returncode == 0, clean.stderr
    assert "every job row agrees" in clean.stderr

    # what the batching bug did to a few rows: finished by its events, "running" in its row
    engine = create_engine(load_database(hq.inst))
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(jobs).where(jobs.c.id == ids[1]).values(state="running"))
    finally:
        engine.dispose()
    damaged = hq.dbadmin("check")
    assert damaged.returncode == 1
    assert damaged.stdout.splitlines() == [
        f"job {ids[1]}: row says running, its last event "
        f"({_event_time(hq, ids[1])} UTC) says done"]
    assert "1 job row(s) disagree with the event log" in damaged.stderr
    as_json = json.loads(hq.dbadmin("check", "--json").stdout)
    assert as_json["job_rows_disagreeing"] == 1
    assert [j["id"] for j in as_json["jobs"]] == [ids[1]]


def _event_time(hq, job_id: int) -> str:
    (at,) = hq.db_rows(sa.select(sa.func.max(events.c.at)).where(events.c.job_id == job_id))[0]
    return f"{at:%Y-%m-%d %H:%M:%S}"


def test_a_big_jobs_file_is_streamed_and_stored_all_or_nothing(running_hq):
    hq = running_hq
    count = 25_001   # two parts of 10,000 and a closing one of 5,001 (messages.PART_JOBS)
    jobs_file = hq.workdir / "big.tab"
    jobs_file.write_text("command::echo {idx}\n" * count)
    result = hq.submit("--hold", "--json", "-f", str(jobs_file), timeout=120)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    ids = reply["ids"]
    assert len(ids) == count and ids == list(range(ids[0], ids[0] + count))
    rows = hq.db_rows(sa.select(jobs.c.submission_id, sa.func.count(), sa.func.min(jobs.c.id))
                      .where(jobs.c.id.in_([ids[0], ids[-1]]) | (jobs.c.submission_id
                                                                  == reply["submission_id"]))
                      .group_by(jobs.c.submission_id))
    assert [tuple(r) for r in rows] == [(reply["submission_id"], count, ids[0])]
    # a line hq-server refuses in the last part: nothing of the submission is stored
    lines = ["command::true\n"] * count
    lines[-2] = "command::true\texcludeHosts::nosuchhost\n"
    jobs_file.write_text("".join(lines))
    before = hq.db_rows(sa.select(sa.func.count()).select_from(jobs))[0][0]
    refused = hq.submit("--hold", "-f", str(jobs_file), timeout=120)
    assert refused.returncode != 0
    assert f"job {count - 1}: " in refused.stderr and "nosuchhost" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert hq.db_rows(sa.select(sa.func.count()).select_from(jobs))[0][0] == before


def test_a_job_gets_as_many_threads_as_cores_unless_it_says_otherwise(running_hq):
    hq = running_hq
    show = 'echo "$HQ_CPUS $OMP_NUM_THREADS $MKL_NUM_THREADS $OPENBLAS_NUM_THREADS"'
    two = hq.submit_id("-c", "2", "-o", "two.out", show)
    own = hq.submit_id("-c", "2", "-o", "own.out", show, OMP_NUM_THREADS="7")
    for job in (two, own):
        assert hq.wait_for(job, {"done", "failed"})["state"] == "done"
    assert (hq.workdir / "two.out").read_text() == "2 2 2 2\n"
    assert (hq.workdir / "own.out").read_text() == "2 7 2 2\n"


def test_a_job_past_its_memory_is_stopped_with_the_reason(running_hq):
    grow = (f"{sys.executable} -c 'block = bytearray(400 * 1024 * 1024)\n"
            "import time; time.sleep(30)'")
    result = running_hq.submit("--memory", "100M", "--wait", grow)
    assert result.returncode != 0
    assert "failed (memory limit 100 MiB exceeded: " in result.stderr, result.stderr


def test_pin_cpus_binds_concurrent_jobs_to_cpus_of_their_own(installed_hq):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a machine with 2 CPUs or more")
    hq = installed_hq
    (hq.inst.etc / "hq-server.cfg").write_text("[execd]\npin_cpus = yes\n")
    hq.start_server()
    # both run at once on the 2-core localhost (each waits for the other's file)
    show = ("grep Cpus_allowed_list /proc/self/status; echo list=$HQ_CPU_LIST; touch $X; "
            "for i in $(seq 100); do [ -e a ] && [ -e b ] && break; sleep 0.05; done")
    ids = [hq.submit_id(show, cwd=hq.workdir, X=name) for name in ("a", "b")]
    bound = []
    for job_id in ids:
        assert hq.wait_for(job_id, {"done", "failed"})["state"] == "done"
        out = (hq.workdir / f"hq-{job_id}.out").read_text().splitlines()
        allowed = out[0].split(":")[1].strip()
        assert out[1] == f"list={allowed}", out
        bound.append(allowed)
    assert len(set(bound)) == 2 and all("," not in b and "-" not in b for b in bound), bound

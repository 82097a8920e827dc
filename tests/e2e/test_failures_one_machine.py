"""What users rely on when processes die or input is wrong (DESIGN §6), on one machine."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import sqlalchemy as sa
from fixtures.running_hq import eventually, wait_gone

from hq.db.model import jobs, server_instances, user_servers


def _states(hq, ids):
    rows = hq.db_rows(sa.select(jobs.c.id, jobs.c.state, jobs.c.restart_count)
                      .where(jobs.c.id.in_(ids)))
    return {r.id: (str(r.state), r.restart_count) for r in rows}


def test_killing_hq_server_loses_no_job_and_runs_none_twice(running_hq):
    hq = running_hq
    log = hq.workdir / "runs.log"
    jobs_file = hq.workdir / "jobs.tab"
    jobs_file.write_text("".join(
        f"command::echo {{idx}} $HQ_JOB_ID >> {log}; sleep 0.05\n" for _ in range(200)))
    result = hq.submit("-f", str(jobs_file), "--json", "-o", "/dev/null", "-O", "/dev/null")
    assert result.returncode == 0, result.stderr
    ids = json.loads(result.stdout)["ids"]
    eventually(lambda: log.exists() and len(log.read_text().splitlines()) >= 10,
               what="some jobs to run")
    os.kill(hq.server_pid(), signal.SIGKILL)
    killed_at = time.monotonic()
    time.sleep(1.0)  # jobs keep running and ending while hq-server is away
    hq.start_server()

    def all_finished() -> bool:
        return all(state in ("done", "failed", "cancelled")
                   for state, _ in _states(hq, ids).values())

    eventually(all_finished, timeout=90, what="all 200 jobs to finish")
    states = _states(hq, ids)
    assert {state for state, _ in states.values()} == {"done"}
    # a job running when hq-server died was not killed or requeued: it just finished
    assert {restarts for _, restarts in states.values()} == {0}
    runs = collections.Counter(line.split()[1] for line in log.read_text().splitlines())
    assert sorted(int(job_id) for job_id in runs) == ids
    assert set(runs.values()) == {1}, "a job ran more than once"
    assert time.monotonic() - killed_at < 90


def test_killing_the_user_server_keeps_running_jobs_and_a_new_one_adopts_them(running_hq):
    hq = running_hq
    job_id = hq.submit_id("echo started; sleep 3; echo finished")
    info = hq.wait_for(job_id, {"running"})
    userd = hq.daemon("hq.userd.main")
    userd.kill()
    wait_gone(userd.pid)
    time.sleep(0.5)
    assert os.path.exists(f"/proc/{info['pid']}"), "the job died with its user-server"

    status = hq.client("status")  # starts a new user-server, which re-adopts the job
    assert status.returncode == 0, status.stderr
    new_userd = hq.daemon("hq.userd.main")
    assert new_userd.pid != userd.pid
    info = hq.wait_for(job_id, {"done", "failed"}, timeout=30)
    assert info["state"] == "done" and info["restart_count"] == 0
    # the registry of user-servers shows the killed one ended and the new one running
    def registry() -> dict[int, object]:
        return dict(hq.db_rows(sa.select(user_servers.c.pid, user_servers.c.stopped_at)))
    eventually(lambda: registry().get(userd.pid) is not None, what="the old one marked gone")
    assert new_userd.pid in registry() and registry()[new_userd.pid] is None
    assert (hq.workdir / f"hq-{job_id}.out").read_text() == "started\nfinished\n"


def test_a_job_that_ends_while_its_exec_server_is_dead_is_not_run_again(running_hq):
    """Its exit status went to the dead exec-server only: the successor, from the journal,
    reports it ended with its exit status unknown, and nothing runs it a second time."""
    hq = running_hq
    runs = hq.workdir / "runs"
    job_id = hq.submit_id(f"sleep 0.5; echo ran >> {runs}")
    info = hq.wait_for(job_id, {"running"})
    execd = hq.daemon("hq.execd.main")
    execd.suspend()   # the job's end waits as a zombie for a parent that never looks
    job = psutil.Process(info["pid"])
    eventually(lambda: job.status() == psutil.STATUS_ZOMBIE, what="the job to end")
    execd.kill()      # ... and goes to init with it
    wait_gone(execd.pid)
    info = hq.wait_for(job_id, {"done", "failed", "pending"}, timeout=60)
    assert info["state"] == "failed", info
    assert info["state_reason"].startswith("exit status unknown"), info
    assert info["restart_count"] == 0
    time.sleep(1.0)
    assert runs.read_text() == "ran\n", "the job ran again"


def test_concurrent_first_calls_start_exactly_one_user_server(running_hq):
    hq = running_hq
    procs = [subprocess.Popen([sys.executable, "-m", "hq.cli.client", "status"],
                              env=hq.env(), cwd=hq.workdir, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(5)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        proc.stdout.close()
        proc.stderr.close()
    userds = [p for p in hq.processes() if "hq.userd.main" in " ".join(p.cmdline())]
    assert len(userds) == 1


def test_hq_server_stops_cleanly_on_term_and_activation_survives_restart(running_hq):
    hq = running_hq
    assert hq.admin("deactivate").returncode == 0
    pid = hq.server_pid()
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    assert not (hq.inst.var / "run" / "hq-server.sock").exists()
    (row,) = hq.db_rows(sa.select(server_instances.c.stopped_at)
                        .where(server_instances.c.pid == pid))
    assert row.stopped_at is not None
    hq.start_server()
    info = json.loads(hq.admin("info", "--json").stdout)
    assert info["cluster_active"] is False


def test_bad_submissions_are_one_line_errors_and_write_nothing(running_hq):
    hq = running_hq
    before = hq.db_rows(sa.select(sa.func.count()).select_from(jobs))[0][0]
    cases = [
        (["--no-such-option", "true"], 2, "no such option"),
        (["-c", "0", "true"], 2, "slots"),
        (["-c", "3", "true"], 2, "largest host has 2"),
        (["--cwd", "/does/not/exist", "true"], 2, "/does/not/exist"),
        (["-E", "nosuchhost", "true"], 2, "nosuchhost"),
    ]
    for args, code, text in cases:
        result = hq.submit(*args)
        assert result.returncode == code, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hq-submit: error:"), (args, lines)
        assert text.lower() in lines[0].lower(), (args, lines)
        assert result.stdout == ""
    bad_file = hq.workdir / "bad.tab"
    bad_file.write_text("command::echo one\ncommand::echo two\tslots::many\n")
    result = hq.submit("-f", str(bad_file))
    assert result.returncode == 2
    assert f"{bad_file}:2: slots" in result.stderr
    after = hq.db_rows(sa.select(sa.func.count()).select_from(jobs))[0][0]
    assert after == before


def test_a_user_not_in_etc_users_is_refused(installed_hq):
    hq = installed_hq
    hq.inst.users_file.write_text("nobody admin\n")
    assert hq.dbadmin("-a").returncode == 0
    hq.start_server()
    result = hq.submit("true")
    assert result.returncode == 4, result.stderr
    assert "not in etc/users" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_non_admin_cannot_use_hq_admin(running_hq):
    hq = running_hq
    me = hq.inst.users_file.read_text().split()[0]
    hq.inst.users_file.write_text(f"{me} user\n")
    assert hq.dbadmin("-a").returncode == 0
    assert hq.admin("reload").returncode == 0  # still admin until the reload takes effect
    result = hq.admin("info")
    assert result.returncode == 4, result.stderr
    assert "admin role" in result.stderr
    assert hq.submit("true").returncode == 0  # still a user


def test_hq_server_refuses_a_database_without_the_schema(installed_hq):
    hq = installed_hq
    assert hq.dbadmin("--drop-tables", "--yes").returncode == 0
    result = hq.run("hq.server.main", "--daemon")
    assert result.returncode == 6
    assert "hq-dbadmin --create-tables" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_hq_server_refuses_a_readable_database_config(installed_hq):
    hq = installed_hq
    hq.inst.db_cfg.chmod(0o644)
    result = hq.run("hq.server.main", "--daemon")
    assert result.returncode == 2
    assert "chmod 600" in result.stderr


def test_log_shows_the_output_of_a_job(running_hq):
    hq = running_hq
    job_id = hq.submit_id("echo line one; echo line two; echo oops >&2")
    hq.wait_for(job_id, {"done"})
    out = hq.client("log", str(job_id))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "line one\nline two\n"
    err = hq.client("log", "--stderr", str(job_id))
    assert err.stdout == "oops\n"


def test_admin_sees_the_cluster(running_hq):
    hq = running_hq
    job_id = hq.submit_id("sleep 30")
    hq.wait_for(job_id, {"running"})
    hosts = json.loads(hq.admin("lscluster", "--json").stdout)["hosts"]
    (host,) = hosts
    assert host["name"] == "localhost" and host["state"] == "up"
    assert host["free_cores"] == 1 and host["running_jobs"] == 1
    # a report writer sees the host's load and heartbeat in the database
    def reported() -> bool:
        (row,) = hq.db_rows(sa.text("SELECT load1, last_heartbeat_at, running_jobs "
                                    "FROM report_hosts"))
        return row.load1 is not None and row.last_heartbeat_at is not None \
            and row.running_jobs == 1
    eventually(reported, timeout=15, what="load and heartbeat in report_hosts")
    assert hq.admin("deactivatehost:localhost").returncode == 0
    assert json.loads(hq.admin("lscluster", "--json").stdout)["hosts"][0]["active"] is False
    users = json.loads(hq.admin("lsusers", "--json").stdout)["users"]
    assert users[0]["running"] == 1 and users[0]["user_server"] is True
    assert hq.client("cancel", str(job_id)).returncode == 0


def test_log_follow_prints_output_while_the_job_runs_and_ends_with_it(running_hq):
    hq = running_hq
    job_id = hq.submit_id("for i in 1 2 3; do echo step $i; sleep 0.5; done")
    hq.wait_for(job_id, {"running"})
    started = time.monotonic()
    follow = hq.client("log", "-f", str(job_id), timeout=60)
    assert follow.returncode == 0, follow.stderr
    assert follow.stdout == "step 1\nstep 2\nstep 3\n"
    assert time.monotonic() - started >= 0.5  # it waited for the job, not just read a file

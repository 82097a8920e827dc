"""Running a cluster, through the real programs on both backends: drain a host with a reason
while a job runs there, see it draining then drained, read its history, resume it; an admin
cancels a job with a reason its owner sees."""

from __future__ import annotations

import json

import sqlalchemy as sa
from fixtures.running_hq import eventually

from hq.db.model import exec_servers, hosts


def _host(hq) -> dict:
    result = hq.admin("lscluster", "--json")
    assert result.returncode == 0, result.stderr
    (host,) = json.loads(result.stdout)["hosts"]
    return host


def test_drain_during_a_run_then_resume(running_hq):
    hq = running_hq
    flag = hq.workdir / "finish"
    running = hq.submit_id(f"while [ ! -e {flag} ]; do sleep 0.1; done")
    hq.wait_for(running, {"running"})
    drained = hq.admin("drain", "localhost", "--reason", "fan replaced")
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout == "host localhost: drained\n"
    host = _host(hq)
    assert (host["display"], host["drain_reason"]) == ("draining", "fan replaced")
    assert host["drained_by"] and host["drained_at"]
    waiting = hq.submit_id("true")
    assert "lscluster" not in hq.admin("lscluster").stderr
    assert "draining" in hq.admin("lscluster").stdout
    reasons = hq.admin("lscluster", "--reasons").stdout
    assert "localhost" in reasons and "fan replaced" in reasons and host["drained_by"] in reasons
    assert hq.show(waiting)["state"] == "pending"
    flag.write_text("")
    assert hq.wait_for(running, {"done", "failed"})["state"] == "done"
    eventually(lambda: _host(hq)["display"] == "drained", what="the host to be drained")
    assert hq.show(waiting)["state"] == "pending"   # nothing new started there
    (row,) = hq.db_rows(sa.select(hosts.c.drained, hosts.c.drain_reason, hosts.c.drained_by))
    assert tuple(row) == (True, "fan replaced", host["drained_by"])

    resumed = hq.admin("resume", "localhost")
    assert resumed.stdout == "host localhost: resumed\n"
    assert hq.wait_for(waiting, {"done", "failed"})["state"] == "done"
    assert _host(hq)["display"] == "up" and _host(hq)["drain_reason"] is None
    history = hq.admin("events", "localhost")
    assert history.returncode == 0, history.stderr
    lines = [line for line in history.stdout.splitlines() if "drained" in line or
             "resumed" in line]
    assert "drained by" in lines[0] and "fan replaced" in lines[0] and "resumed by" in lines[1]
    missing = hq.admin("drain", "nosuchhost", "--reason", "x")
    assert missing.returncode == 3 and "no such host: nosuchhost" in missing.stderr
    no_reason = hq.admin("drain", "localhost")
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr


def test_an_admin_cancels_a_job_with_a_reason_its_owner_sees(running_hq):
    hq = running_hq
    running = hq.submit_id("sleep 60")
    pending = hq.submit_id("--hold", "true")
    hq.wait_for(running, {"running"})
    result = hq.admin("cancel", str(running), str(pending), "999999", "--reason",
                      "fills /scratch")
    assert result.returncode == 3, result.stderr   # 999999 does not exist
    assert "job 999999: not found" in result.stdout
    info = hq.wait_for(running, {"cancelled"})
    assert info["state_reason"].startswith("cancelled by admin ")
    assert info["state_reason"].endswith(": fills /scratch")
    assert hq.show(pending)["state_reason"] == info["state_reason"]


def _exec_servers(hq) -> list[dict]:
    result = hq.admin("execservers", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["exec_servers"]


def test_exec_servers_are_listed_with_their_states(running_hq):
    hq = running_hq
    first = hq.submit_id("true")
    hq.wait_for(first, {"done"})
    eventually(lambda: [e["state"] for e in _exec_servers(hq)] == ["running"],
               what="the exec-server to be listed")
    (seen,) = _exec_servers(hq)
    daemon = hq.daemon("hq.execd.main")
    assert (seen["host"], seen["pid"]) == ("localhost", daemon.pid)
    assert "running" in hq.admin("execservers").stdout
    daemon.kill()
    eventually(lambda: _exec_servers(hq)[0]["state"] == "connection lost",
               what="the killed exec-server to show as lost")
    again = hq.submit_id("true")
    hq.wait_for(again, {"done"})
    eventually(lambda: _exec_servers(hq)[0]["state"] == "running", what="a new exec-server")
    assert _exec_servers(hq)[0]["pid"] != seen["pid"]
    rows = hq.db_rows(sa.select(exec_servers.c.pid, exec_servers.c.state,
                                exec_servers.c.stopped_at).order_by(exec_servers.c.id))
    assert [(r.pid, r.state, r.stopped_at is not None) for r in rows][:1] == [
        (seen["pid"], "connection lost", True)]
    assert rows[-1].state == "running" and rows[-1].stopped_at is None


def test_an_exec_server_let_go_by_an_idle_user_server_shows_idle_timeout(installed_hq):
    hq = installed_hq
    (hq.inst.etc / "hq-server.cfg").write_text(
        "[server]\nuser_server_idle_timeout = 2\nexec_server_idle_timeout = 600\n")
    hq.start_server()
    job = hq.submit_id("true")
    hq.wait_for(job, {"done"})
    eventually(lambda: [e["state"] for e in _exec_servers(hq)] == ["idle timeout"],
               timeout=30, what="the idle user-server to let its exec-server go")
    (row,) = hq.db_rows(sa.select(exec_servers.c.state, exec_servers.c.stopped_at))
    assert row.state == "idle timeout" and row.stopped_at is not None


def test_jobs_on_a_gpu_host_see_disjoint_devices(installed_hq):
    hq = installed_hq
    (hq.inst.etc / "cluster.tab").write_text("host\tcores\tgpus\nlocalhost\t2\tGPU-x,GPU-y\n")
    assert hq.dbadmin("--add-standard-entries").returncode == 0
    hq.start_server()
    record = 'echo "${CUDA_VISIBLE_DEVICES-unset} $HQ_GPUS" > gpu-$HQ_JOB_ID.txt; sleep 1'
    ids = [hq.submit_id("--gpus", "1", record) for _ in range(3)]
    plain = hq.submit_id(record)
    for job in [*ids, plain]:
        assert hq.wait_for(job, {"done", "failed"}, timeout=60)["state"] == "done"
    seen = {job: (hq.workdir / f"gpu-{job}.txt").read_text().split() for job in ids}
    assert all(len(s) == 2 and s[0] == s[1] and s[0] in ("GPU-x", "GPU-y")
               for s in seen.values()), seen
    spans = {job: (hq.show(job)["started_at"], hq.show(job)["ended_at"]) for job in ids}
    for a in ids:
        for b in ids:
            overlap = a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]
            assert not overlap or seen[a][0] != seen[b][0], (a, b, seen, spans)
    assert (hq.workdir / f"gpu-{plain}.txt").read_text() == " \n"   # told: no GPU for it
    assert hq.show(ids[0])["gpus"] == 1 and hq.show(ids[0])["gpu_ids"] == seen[ids[0]][0]
    refused = hq.submit("--gres", "gpu:3", "true")
    assert refused.returncode == 2 and "asks for 3 GPU(s)" in refused.stderr


def test_lscluster_detect_compares_cluster_tab_with_the_hardware(installed_hq):
    import os

    hq = installed_hq
    hwdetect = hq.run("hq.execd.main", "--hwdetect", "--json")
    assert hwdetect.returncode == 0, hwdetect.stderr
    found = json.loads(hwdetect.stdout)
    assert found["cores"] == os.cpu_count() and found["memory_mb"] > 0
    (hq.inst.etc / "cluster.tab").write_text(
        "host\tcores\tgpus\n"
        f"localhost\t{found['cores'] + 2}\t{len(found['gpus']) + 1}\n")
    assert hq.dbadmin("--add-standard-entries").returncode == 0
    hq.start_server()

    def differences() -> list:
        result = hq.admin("lscluster", "--detect", "--json")
        return json.loads(result.stdout)["differences"]
    eventually(lambda: differences() and differences()[0]["what"] != "hardware",
               timeout=30, what="the host monitor's first report")
    assert {(d["what"], d["configured"], d["found"]) for d in differences()} == {
        ("cores", found["cores"] + 2, found["cores"]),
        ("gpus", len(found["gpus"]) + 1, len(found["gpus"]))}
    text = hq.admin("lscluster", "--detect")
    assert text.returncode == 1 and "localhost: cores: cluster.tab says" in text.stdout


def test_accounting_counts_what_ended_from_the_report_views(running_hq):
    import getpass

    hq = running_hq
    ids = [hq.submit_id("-c", "2", "sleep 0.5"), hq.submit_id("exit 3")]
    for job in ids:
        hq.wait_for(job, {"done", "failed"})
    result = hq.admin("accounting", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert (row["key"], row["jobs"], row["done"], row["failed"]) == (getpass.getuser(), 2, 1, 1)
    assert 2 * 0.4 / 3600 < row["core_hours"] < 2 * 5 / 3600   # cores x run time
    by_day = json.loads(hq.admin("accounting", "--by", "day", "--json").stdout)["rows"]
    assert len(by_day) == 1 and by_day[0]["jobs"] == 2 and len(by_day[0]["key"]) == 10
    table = hq.admin("accounting").stdout
    assert "CORE-H" in table and getpass.getuser() in table
    later = hq.admin("accounting", "--since", "2000-01-01", "--until", "2000-01-02")
    assert "no job ended between" in later.stdout
    bad = hq.admin("accounting", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since yesterday-ish" in bad.stderr


def test_limits_of_etc_users_hold_and_are_named(installed_hq):
    import getpass

    hq = installed_hq
    (hq.inst.etc / "users").write_text(f"{getpass.getuser()} admin max_running=1\n")
    assert hq.dbadmin("--add-standard-entries").returncode == 0
    hq.start_server()
    first = hq.submit_id("sleep 30")
    second = hq.submit_id("true")
    hq.wait_for(first, {"running"})
    eventually(lambda: hq.show(second)["state_reason"] == "user limit of 1 running jobs reached",
               what="the limit named as the reason")
    assert hq.show(second)["state"] == "pending"
    assert hq.client("cancel", str(first)).returncode == 0
    assert hq.wait_for(second, {"done", "failed"}, timeout=30)["state"] == "done"

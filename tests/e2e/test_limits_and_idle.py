"""Limits per Unix group, and per-host exec-server idle timeouts, on the ssh test hosts with
the real test users, on both backends.

hqalice and hqbob are both in the Unix group hqteam (scripts/testground/users.sh): a limit on
that group caps what the two hold together. The idle timeout of etc/cluster.tab is read when a
user-server links to a host, so these tests edit the files of a running installation."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
from fixtures.running_hq import eventually
from fixtures.testground import TEAM_GROUP

from hq.db.model import jobs

pytestmark = pytest.mark.root

BACKENDS = pytest.mark.parametrize("cluster_hq", ["sqlite", "mariadb"], indirect=True)


def _states(hq, ids: list[int]) -> dict[int, str]:
    return {r.id: str(r.state) for r in hq.db_rows(
        sa.select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(ids)))}


def _running(hq, ids: list[int]) -> list[int]:
    return sorted(i for i, s in _states(hq, ids).items() if s in ("dispatched", "running"))


@BACKENDS
def test_a_group_limit_holds_across_two_users(cluster_hq):
    hq = cluster_hq
    alice, bob = hq.users.alice, hq.users.bob
    users_file = hq.root / "etc" / "users"
    server_cfg = hq.root / "etc" / "hq-server.cfg"
    # both spellings: [limits] wins over etc/users, so the group holds 2 cores, not 4
    users_file.write_text(users_file.read_text() + f"@{TEAM_GROUP} max_cores=4\n")
    server_cfg.write_text(server_cfg.read_text()
                          + f"[limits]\ngroup.{TEAM_GROUP} = max_cores=2\n")
    reload = hq.admin_cmd("reload")
    assert reload.returncode == 0, reload.stderr
    listed = {u["name"]: u for u in json.loads(hq.admin_cmd("lsusers", "--json").stdout)["users"]}
    assert listed[alice.name]["groups"] == listed[bob.name]["groups"] == [TEAM_GROUP]
    table = hq.admin_cmd("lsusers").stdout
    assert any(line.split()[0] == alice.name and line.endswith(f"groups={TEAM_GROUP}")
               for line in table.splitlines())
    ids = {user.name: hq.submit_ids(user, "--array", "1-2", "sleep 300", cwd=hq.workdir(user))
           for user in (alice, bob)}
    every = ids[alice.name] + ids[bob.name]
    eventually(lambda: len(_running(hq, every)) == 2, timeout=60,
               what="two jobs of the group to start")
    time.sleep(3)   # several scheduling rounds, with 4 of the 6 cores still free
    running = _running(hq, every)
    assert len(running) == 2, _states(hq, every)
    waiting = next(i for i in every if i not in running)
    owner = alice if waiting in ids[alice.name] else bob
    assert hq.show(owner, waiting)["state_reason"] == f"group {TEAM_GROUP} max_cores=2 reached"

    # a bad [limits] is refused with its file and line, and the limits in force stay
    server_cfg.write_text(server_cfg.read_text() + "group.nosuchgroup-hq = max_cores=1\n")
    refused = hq.admin_cmd("reload")
    assert refused.returncode == 2, refused.stderr
    assert f"{server_cfg}:" in refused.stderr
    assert 'unknown Unix group "nosuchgroup-hq"' in refused.stderr

    # one of them ends: exactly one other starts in its place
    first = running[0]
    first_owner = alice if first in ids[alice.name] else bob
    assert hq.client(first_owner, "cancel", str(first)).returncode == 0
    eventually(lambda: len(_running(hq, every)) == 2 and first not in _running(hq, every),
               timeout=60, what="another job of the group to take the freed cores")
    time.sleep(2)
    assert len(_running(hq, every)) == 2, _states(hq, every)


def _exec_servers(hq) -> dict[str, str]:
    result = hq.admin_cmd("execservers", "--json")
    assert result.returncode == 0, result.stderr
    return {e["host"]: e["state"] for e in json.loads(result.stdout)["exec_servers"]}


@BACKENDS
def test_a_host_with_a_short_idle_timeout_lets_its_exec_server_go_first(cluster_hq):
    hq = cluster_hq
    alice = hq.users.alice
    (quick, _), (slow, _), (third, _) = hq.hosts.hosts
    tab = hq.root / "etc" / "cluster.tab"
    lines = tab.read_text().splitlines()
    tab.write_text("\n".join([lines[0] + "\tidle_timeout"]
                             + [line + ("\t3s" if line.startswith(quick + "\t") else "\t")
                                for line in lines[1:]]) + "\n")
    shown = hq.hosts_view()
    assert shown[quick]["idle_timeout_s"] == 3.0
    assert shown[slow]["idle_timeout_s"] == 600.0   # [server] exec_server_idle_timeout
    table = {line.split()[0]: line.split() for line in
             hq.admin_cmd("lscluster").stdout.splitlines()}
    idle = table["HOST"].index("IDLE")
    assert (table[quick][idle], table[slow][idle]) == ("3s", "10m")
    work = hq.workdir(alice)
    on_quick = hq.submit_ids(alice, "-E", f"{slow},{third}", "true", cwd=work)
    on_slow = hq.submit_ids(alice, "-E", f"{quick},{third}", "true", cwd=work)
    hq.wait_jobs(on_quick + on_slow, {"done", "failed"})
    assert {hq.show(alice, i)["host"] for i in on_quick} == {quick}
    eventually(lambda: _exec_servers(hq).get(quick) == "idle timeout", timeout=30,
               what=f"the exec-server on {quick} to be let go after 3 s idle")
    assert _exec_servers(hq)[slow] == "running"
    listed = hq.admin_cmd("execservers")
    assert "idle timeout" in listed.stdout and "running" in listed.stdout
    # a job for the let-go host links to it again
    again = hq.submit_ids(alice, "-E", f"{slow},{third}", "true", cwd=work)
    hq.wait_jobs(again, {"done"})
    eventually(lambda: _exec_servers(hq).get(quick) == "running", timeout=30,
               what=f"a new exec-server on {quick}")


def test_hq_server_does_not_start_with_a_limit_on_an_unknown_group(installed_hq):
    hq = installed_hq
    users = hq.inst.etc / "users"
    users.write_text(users.read_text() + "# groups\n@nosuchgroup-hq max_cores=4\n")
    result = hq.run("hq.server.main", "--daemon", timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = len(users.read_text().splitlines())
    assert f'{users}:{line}: group: unknown Unix group "nosuchgroup-hq"' in result.stderr

"""An installation upgraded in place while jobs run: ``git pull && make``, restart hq-server.

The daemons of the old version (protocol 1) keep running after the upgrade: the user's
user-server and exec-server, with a running job. The new hq-server speaks version 1 to the old
user-server, new commands speak it to the old user-server, and a new user-server re-adopts the
old exec-server in version 1; every job ends exactly once and is recorded, on both backends.

The old version is this repository's own last commit of protocol 1, unpacked with ``git
archive`` and put first on PYTHONPATH, which is how those daemons go on running old code.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fixtures.mariadb import skip_or_fail
from fixtures.running_hq import Hq, eventually, wait_gone

from hq.db.model import events, jobs

REPO = Path(__file__).resolve().parents[2]
# The last commit whose daemons speak protocol version 1 only.
PROTOCOL_1 = "6356f001cf2effdc2b50cceca050bf0c71f6b15a"


@pytest.fixture(scope="module")
def old_code() -> Iterator[Path]:
    """hq/ as of PROTOCOL_1, in a directory of its own."""
    tree = Path(tempfile.mkdtemp(prefix="hq-protocol1-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PROTOCOL_1, "hq"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        shutil.rmtree(tree)
        skip_or_fail(f"the old version is not in this clone's history: "
                     f"{archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    yield tree
    shutil.rmtree(tree, ignore_errors=True)


def old(hq: Hq, old_code: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one of the old version's programs."""
    return hq.run(module, *args, PYTHONPATH=str(old_code))


def old_daemon(hq: Hq, module: str, old_code: Path):  # type: ignore[no-untyped-def]
    found = [p for p in hq.processes() if module in " ".join(p.cmdline())
             and "--bridge" not in p.cmdline()]
    assert len(found) == 1, f"expected one {module}, found {len(found)}"
    assert found[0].environ().get("PYTHONPATH") == str(old_code), "not the old version"
    return found[0]


def start_old_server(hq: Hq, old_code: Path) -> None:
    """The installation as the old version had it (its schema revision), its hq-server up."""
    down = hq.dbadmin("downgrade", "0001", "--yes")
    assert down.returncode == 0, down.stderr
    started = old(hq, old_code, "hq.server.main", "--daemon")
    assert started.returncode == 0, started.stderr


def test_jobs_running_through_an_upgrade_end_once_and_are_recorded(installed_hq, old_code):
    hq = installed_hq
    work = hq.workdir
    start_old_server(hq, old_code)
    # the old version: a job that outlives the upgrade, and one held until after it
    started = old(hq, old_code, "hq.cli.submit", "--parsable",
                  f"echo $HQ_JOB_ID >> {work}/runs; sleep 4; echo first > first.out")
    assert started.returncode == 0, started.stderr
    first = int(started.stdout)
    held = old(hq, old_code, "hq.cli.submit", "--parsable", "--hold",
               f"echo $HQ_JOB_ID >> {work}/runs")
    held_id = int(held.stdout)

    def state(job_id: int) -> str:
        (row,) = hq.db_rows(sa.select(jobs.c.state).where(jobs.c.id == job_id))
        return str(row.state)

    eventually(lambda: state(first) == "running", what="the first job to start")
    old_userd = old_daemon(hq, "hq.userd.main", old_code)
    old_execd = old_daemon(hq, "hq.execd.main", old_code)

    # the upgrade: the old hq-server stops, the schema is upgraded (the new hq-server refuses
    # an old one, naming the command), the new one starts on the same database
    hq.stop_server()
    refused = hq.run("hq.server.main", "--daemon")
    assert refused.returncode != 0 and "hq-dbadmin upgrade" in refused.stderr
    up = hq.dbadmin("upgrade")
    assert up.returncode == 0, up.stderr
    hq.start_server()
    # the old user-server comes back to the new hq-server (protocol 1) and reports the end
    eventually(lambda: state(first) == "done", 30, "the first job to be recorded done")
    assert (work / "first.out").read_text() == "first\n"

    # new commands, through the old user-server
    shown = hq.show(first)
    assert (shown["state"], shown["exit_code"]) == ("done", 0)
    second = hq.submit_id(f"echo $HQ_JOB_ID >> {work}/runs; sleep 4; echo second > second.out")
    eventually(lambda: state(second) == "running", 30, "the second job to start")
    assert old_execd.is_running()   # the old exec-server runs it

    # the old user-server dies; a new one re-adopts the old exec-server (protocol 1)
    old_userd.kill()
    wait_gone(old_userd.pid)
    status = hq.client("status")
    assert status.returncode == 0, status.stderr
    new_userd = hq.daemon("hq.userd.main")
    assert "PYTHONPATH" not in new_userd.environ()
    eventually(lambda: state(second) == "done", 30, "the second job to be recorded done")
    assert (work / "second.out").read_text() == "second\n"

    # the job held across the upgrade is released and runs once
    assert hq.client("release", str(held_id)).returncode == 0
    assert hq.wait_for(held_id, {"done", "failed"})["state"] == "done"
    # hq-admin of the new version talks to the new hq-server
    assert hq.admin("status").returncode == 0

    runs = (work / "runs").read_text().split()
    assert sorted(map(int, runs)) == sorted([first, second, held_id]), "a job ran twice"
    check = hq.dbadmin("check")
    assert check.returncode == 0, check.stdout + check.stderr
    finished = hq.db_rows(sa.select(events.c.job_id).where(
        events.c.job_id.in_([first, second, held_id]), events.c.new_state == "done"))
    assert sorted(r.job_id for r in finished) == sorted([first, second, held_id])


def test_hq_admin_of_the_new_version_steers_an_old_hq_server(installed_hq, old_code):
    hq = installed_hq
    start_old_server(hq, old_code)
    info = hq.admin("info", "--json")
    assert info.returncode == 0, info.stderr
    assert '"cluster_active": true' in info.stdout
    assert hq.admin("deactivatehost", "localhost").stdout.strip() == \
        "host localhost: deactivated"
    assert "localhost" in hq.admin("lscluster").stdout
    pid = hq.server_pid()
    assert hq.admin("shutdown").returncode == 0     # the restart of the upgrade, from hq-admin
    wait_gone(pid)

"""An installation made by an older hq, started with this one: its data is kept and locked up.

Older hq kept the embedded database in var/hq.db, mode 0644 in a 0755 var/: readable by every
account. The next hq-server start moves it into var/db/ (0700) with its journal files, makes
them 0600, and every job is still there.
"""

from __future__ import annotations

import stat
from pathlib import Path

from fixtures.mariadb import os_user
from fixtures.running_hq import Hq

from hq.config import Installation


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_world_readable_database_in_var_is_moved_private_at_the_next_start(tmp_path):
    root = tmp_path / "hq"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "cluster.tab").write_text("host\tcores\nlocalhost\t2\n")
    (root / "etc" / "users").write_text(f"{os_user()} admin\n")
    (root / "etc" / "hq-server.cfg").write_text("[scheduler]\nload_factor = 100\n")
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(mode=0o700)
    work.mkdir()
    hq = Hq(Installation(root), home, work)
    # the old layout: hq told to use var/hq.db, where the old default put it
    cfg = root / "etc" / "hq-db.cfg"
    cfg.write_text("[DATABASE]\ndatabase_dialect = sqlite\ndatabase_path = var/hq.db\n")
    cfg.chmod(0o600)
    created = hq.dbadmin("-C", "-a")
    assert created.returncode == 0, created.stderr
    legacy = root / "var" / "hq.db"
    try:
        hq.start_server()
        held = hq.submit_id("--hold", "true")
        hq.stop_server()
        cfg.unlink()
        for path in root.glob("var/hq.db*"):
            path.chmod(0o644)
        (root / "var").chmod(0o755)

        hq.start_server()
        data = root / "var" / "db"
        assert not legacy.exists()
        assert mode(data) == 0o700
        assert {mode(p) for p in data.iterdir()} == {0o600}
        assert hq.show(held)["state"] == "held"
        log = (root / "var" / "log" / "hq-server.log").read_text()
        assert f"moved {legacy} to {data / 'hq.db'}" in log
    finally:
        for proc in hq.processes():
            proc.kill()

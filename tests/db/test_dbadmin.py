"""hq-dbadmin end to end: a real subprocess against a scratch installation, on both backends."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from hq.config import load_database
from hq.db.engine import create_engine
from hq.db.migrate import head_revision
from hq.db.model import events, hosts, user_roles, users


def dbadmin(inst, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HQPATH": str(inst.root)}
    return subprocess.run([sys.executable, "-m", "hq.cli.dbadmin", *args], env=env,
                          input=stdin if stdin is not None else "", capture_output=True,
                          text=True, timeout=120)


def write_cluster(inst, rows: list[str]) -> None:
    inst.cluster_tab.write_text("host\tcores\tmemory\tfeatures\n" + "".join(r + "\n" for r in rows))


def table_rows(inst, query) -> list[sa.Row]:
    engine = create_engine(load_database(inst))
    try:
        with engine.connect() as conn:
            return list(conn.execute(query))
    finally:
        engine.dispose()


@pytest.fixture
def loaded_install(hq_install):
    """An installation whose database was created and loaded with -C -a."""
    write_cluster(hq_install, ["node1\t4\t16G\tgpu,avx2", "node2\t8\t\t"])
    hq_install.users_file.write_text("# who may use hq\nroot\tADMIN\nalice  user\nbob user\n")
    result = dbadmin(hq_install, "-C", "-a")
    assert result.returncode == 0, result.stderr
    return hq_install


def test_create_and_load_standard_entries(loaded_install):
    result = dbadmin(loaded_install, "-a")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "no changes" in result.stderr

    host_rows = table_rows(loaded_install, sa.select(hosts.c.name, hosts.c.cores,
                                                     hosts.c.memory_mb, hosts.c.features)
                           .order_by(hosts.c.name))
    assert [tuple(r) for r in host_rows] == [("node1", 4, 16384, "avx2,gpu"),
                                             ("node2", 8, None, "")]
    roles = table_rows(loaded_install, sa.select(users.c.name, user_roles.c.role)
                       .join(user_roles).order_by(users.c.name, user_roles.c.role))
    assert [(n, str(r)) for n, r in roles] == [("alice", "user"), ("bob", "user"),
                                               ("root", "admin"), ("root", "user")]


def test_first_load_reports_what_it_added(hq_install):
    write_cluster(hq_install, ["node1\t4\t\t"])
    hq_install.users_file.write_text("alice admin\n")
    result = dbadmin(hq_install, "--create-tables", "--add-standard-entries")
    assert result.returncode == 0, result.stderr
    *lines, identity = result.stdout.splitlines()
    assert lines == [
        "user alice: added (admin,user)",
        "host node1: added (4 cores)",
        "cluster cluster_active: added (yes)",
    ]
    # a random name of this database, made once (daemons tell its jobs from another's by it)
    assert re.fullmatch(r"cluster database_id: added \([0-9a-f]{16}\)", identity)
    assert "schema created" in result.stderr
    again = dbadmin(hq_install, "-a")
    assert "database_id" not in again.stdout


def test_reload_after_editing_cluster_tab_reports_and_applies_changes(loaded_install):
    write_cluster(loaded_install, ["node1\t6\t16G\tgpu,avx2", "node3\t2\t\t"])
    result = dbadmin(loaded_install, "-a")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "host node1: cores 4 -> 6",
        "host node3: added (2 cores)",
        "host node2: retired (no longer in etc/cluster.tab)",
    ]
    rows = table_rows(loaded_install, sa.select(hosts.c.name, hosts.c.cores, hosts.c.retired)
                      .order_by(hosts.c.name))
    assert [tuple(r) for r in rows] == [("node1", 6, False), ("node2", 8, True),
                                        ("node3", 2, False)]
    logged = table_rows(loaded_install, sa.select(events.c.message)
                        .where(events.c.host_name == "node2"))
    assert [m for (m,) in logged] == ["host node2: added (8 cores)",
                                      "host node2: retired (no longer in etc/cluster.tab)"]

    # the host comes back
    write_cluster(loaded_install, ["node1\t6\t16G\tgpu,avx2", "node2\t8\t\t", "node3\t2\t\t"])
    again = dbadmin(loaded_install, "-a", "--json")
    assert again.returncode == 0, again.stderr
    assert '"host node2: back in etc/cluster.tab (no longer retired)"' in again.stdout


def test_a_bad_line_names_file_line_and_field_and_writes_nothing(loaded_install):
    loaded_install.users_file.write_text("root admin\nalice user\nbob user\ncarol user\n")
    write_cluster(loaded_install, ["node1\t4\t16G\tgpu,avx2", "node2\tx\t\t"])
    result = dbadmin(loaded_install, "-a")
    assert result.returncode == 2
    assert result.stderr.strip() == \
        f'hq-dbadmin: error: {loaded_install.cluster_tab}:3: cores: not a positive integer: "x"'
    names = [n for (n,) in table_rows(loaded_install, sa.select(users.c.name))]
    assert "carol" not in names


def test_users_file_with_unknown_role_is_refused(loaded_install):
    loaded_install.users_file.write_text("root admin\ndave superuser\n")
    result = dbadmin(loaded_install, "-a")
    assert result.returncode == 2
    assert f"{loaded_install.users_file}:2:" in result.stderr
    assert "superuser" in result.stderr


def test_check_and_current_follow_the_schema(hq_install):
    before = dbadmin(hq_install, "check")
    assert before.returncode == 6
    assert "hq-dbadmin --create-tables --add-standard-entries" in before.stderr
    assert dbadmin(hq_install, "-C").returncode == 0
    assert dbadmin(hq_install, "check").returncode == 0
    current = dbadmin(hq_install, "current")
    assert current.stdout.strip() == f"{head_revision()} (head)"


def test_add_standard_entries_without_a_schema_says_what_to_run(hq_install):
    result = dbadmin(hq_install, "-a")
    assert result.returncode == 6
    assert "--create-tables" in result.stderr


def test_drop_tables_needs_confirmation(loaded_install):
    refused = dbadmin(loaded_install, "--drop-tables")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert dbadmin(loaded_install, "check").returncode == 0

    dropped = dbadmin(loaded_install, "--drop-tables", "--yes")
    assert dropped.returncode == 0, dropped.stderr
    engine = create_engine(load_database(loaded_install))
    try:
        assert sa.inspect(engine).get_table_names() == []
        assert sa.inspect(engine).get_view_names() == []
    finally:
        engine.dispose()
    assert dbadmin(loaded_install, "check").returncode == 6


def test_show_configuration(loaded_install):
    result = dbadmin(loaded_install, "-s")
    assert result.returncode == 0, result.stderr
    assert "schema:" in result.stdout and f"{head_revision()} (head)" in result.stdout
    as_json = dbadmin(loaded_install, "-s", "--json")
    assert f'"schema": "{head_revision()} (head)"' in as_json.stdout


def _password_install(tmp_path: Path, mode: int):
    from hq.config import Installation

    root = tmp_path / "pw"
    (root / "etc").mkdir(parents=True)
    cfg = root / "etc" / "hq-db.cfg"
    cfg.write_text("[DATABASE]\ndatabase_dialect = mysql\ndatabase_host = 127.0.0.1\n"
                   "database_port = 1\ndatabase_name = hq\ndatabase_username = hq\n"
                   "database_password = s3cret-Pa55\n")
    cfg.chmod(mode)
    return Installation(root)


def test_show_masks_the_password_even_when_the_server_is_unreachable(tmp_path):
    inst = _password_install(tmp_path, 0o600)
    result = dbadmin(inst, "-s")
    assert result.returncode == 0, result.stderr
    assert "s3cret-Pa55" not in result.stdout + result.stderr
    assert "***" in result.stdout
    assert "unavailable" in result.stdout


def test_unreachable_database_is_one_line_with_exit_6(tmp_path):
    inst = _password_install(tmp_path, 0o600)
    result = dbadmin(inst, "-C")
    assert result.returncode == 6
    assert len(result.stderr.strip().splitlines()) == 1
    assert "s3cret-Pa55" not in result.stderr


def test_world_readable_db_config_is_refused(tmp_path):
    inst = _password_install(tmp_path, 0o644)
    result = dbadmin(inst, "-s")
    assert result.returncode == 2
    assert "chmod 600" in result.stderr
    assert "s3cret-Pa55" not in result.stderr

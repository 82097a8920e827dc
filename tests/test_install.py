"""Installing and starting hq for real: bin/ wrappers, .hqrc, `make sql`, the test fixtures.

The `make sql` tests run the real Makefile and scripts/hq-sql.sh on a scratch copy of the
installation's files (in a short directory under /tmp, with the repository's hqVE symlinked so
nothing is reinstalled) on a free port, and check the instance, the accounts and the files it
leaves, as an admin and a report writer would use them.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
from fixtures.installation import REPO, run_hq
from fixtures.mariadb import (
    INSTALL_DB,
    MARIADBD,
    free_port,
    os_user,
    short_tmpdir,
    skip_or_fail,
    unique_name,
)

WRAPPERS = {
    "hq-submit": "hq.cli.submit",
    "hq-client": "hq.cli.client",
    "hq-admin": "hq.cli.admin",
    "hq-dbadmin": "hq.cli.dbadmin",
    "hq-server": "hq.server.main",
    "hq-user-server": "hq.userd.main",
    "hq-exec-server": "hq.execd.main",
}
ER_TABLEACCESS_DENIED = 1142   # "SELECT command denied to user ... for table ..."
# what a scratch copy needs for `make sql`; hqVE is symlinked, not copied
INSTALL_FILES = ("Makefile", "scripts", "bin", "hqConf/requirements.txt")
HQ_ENV_VARS = ("HQPATH", "HQ_VE_PATH", "HQ_DB_PORT", "HQ_DB_AUTH", "HQ_DB_OSUSER",
               "HQ_SERVER_USER", "HQ_DB_REWRITE_CFG")


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without hq's variables (a developer may have sourced a .hqrc)."""
    env = {k: v for k, v in os.environ.items() if k not in HQ_ENV_VARS}
    env["HQ_FROZEN"] = "no"   # these tests are about the virtualenv, whatever var/frozen/ holds
    env.update(extra)
    return env


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# ---------------------------------------------------------------------------- bin/ wrappers

@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrapper_is_an_executable_posix_script(name: str) -> None:
    path = REPO / "bin" / name
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert f"-m {WRAPPERS[name]} " in text


@pytest.fixture
def fake_virtualenv(tmp_path: Path) -> Path:
    """A stand-in HQ_VE_PATH whose bin/python prints HQPATH and its arguments, one per line."""
    ve = tmp_path / "ve"
    (ve / "bin").mkdir(parents=True)
    python = ve / "bin" / "python"
    python.write_text('#!/bin/sh\nprintf "%s\\n" "HQPATH=$HQPATH" "$@"\n')
    python.chmod(0o755)
    return ve


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrapper_finds_its_installation_and_passes_arguments(
        name: str, fake_virtualenv: Path, tmp_path: Path) -> None:
    link = tmp_path / name   # as a user's ~/bin symlink would call it
    link.symlink_to(REPO / "bin" / name)
    out = subprocess.run([str(link), "a b", "", "--x=*"], env=clean_env(HQ_VE_PATH=str(
        fake_virtualenv)), cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:-1] == [f"HQPATH={REPO}", "-P", "-m", WRAPPERS[name],
                                    "a b", "", "--x=*"]
    # an HQPATH from the environment wins
    out = subprocess.run([str(link)], env=clean_env(HQPATH="/elsewhere", HQ_VE_PATH=str(
        fake_virtualenv)), capture_output=True, text=True, check=True).stdout
    assert out.startswith("HQPATH=/elsewhere\n")


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrapper_runs_the_programs_help(name: str, tmp_path: Path) -> None:
    result = subprocess.run([str(REPO / "bin" / name), "--help"], env=clean_env(),
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    # the wrapper started the right program: its usage line names it
    assert result.stdout.startswith(f"Usage: {name} "), result.stdout[:200]


def test_hqrc_sets_hqpath_virtualenv_and_path() -> None:
    subprocess.run(["make", "-s", ".hqrc"], cwd=REPO, env=clean_env(), check=True,
                   capture_output=True)
    hqrc = REPO / ".hqrc"
    assert stat.S_IMODE(hqrc.stat().st_mode) & 0o044 == 0o044   # every account may read it
    # sourced twice: PATH gets $HQPATH/bin once
    shown = subprocess.run(
        ["/bin/sh", "-c", '. "$1"; . "$1"; printf "%s\\n" "$HQPATH" "$HQ_VE_PATH" "$PATH";'
         ' sh -c \'echo "$HQPATH"\'', "sh", str(hqrc)],
        env=clean_env(PATH="/usr/bin:/bin"), capture_output=True, text=True,
        check=True).stdout.split("\n")
    real = str(REPO.resolve())
    assert shown[:4] == [real, f"{real}/hqVE", f"{real}/bin:/usr/bin:/bin", real]


def test_install_system_deps_is_a_quick_no_op_when_everything_is_there() -> None:
    script = REPO / "scripts" / "install-system-deps.sh"
    if not (MARIADBD.exists() and Path("/usr/sbin/sshd").exists()):
        skip_or_fail("mariadb-server or openssh-server missing: `make test` installs them")
    started = time.monotonic()
    result = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert time.monotonic() - started < 5
    bad = subprocess.run([str(script), "postgres"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "usage" in bad.stderr


# ---------------------------------------------------------------------------- make sql

@dataclass
class ScratchInstallation:
    """A copy of the installation files for `make sql`, with its own port and var/, etc/."""

    root: Path
    port: int
    env: dict[str, str]
    make_sql_output: subprocess.CompletedProcess[str] | None = None   # of the first `make sql`

    @classmethod
    def create(cls, **env: str) -> ScratchInstallation:
        root = short_tmpdir("hqs-")
        for name in INSTALL_FILES:
            src, dst = REPO / name, root / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
        (root / "hqVE").symlink_to(REPO / "hqVE")
        port = free_port()
        return cls(root=root, port=port, env=clean_env(HQ_DB_PORT=str(port), **env))

    def make(self, *targets: str, check: bool = True, **env: str
             ) -> subprocess.CompletedProcess[str]:
        """Run make in the copy with its environment (plus ``env``)."""
        result = subprocess.run(["make", *targets], cwd=self.root, env={**self.env, **env},
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=300, check=False)
        if check:
            assert result.returncode == 0, (f"make {' '.join(targets)} failed:\n"
                                            f"{result.stdout}\n{result.stderr}")
        return result

    def cfg(self, name: str) -> dict[str, str]:
        """The [DATABASE] section of etc/<name>."""
        parser = configparser.ConfigParser()
        parser.read(self.root / "etc" / name)
        return dict(parser["DATABASE"])

    @property
    def socket(self) -> Path:
        return self.root / "var" / "mariadb" / "mysqld.sock"

    def pid(self) -> int | None:
        try:
            return int((self.root / "var" / "mariadb" / "mariadbd.pid").read_text())
        except (OSError, ValueError):
            return None

    def admin(self, **kwargs: Any) -> pymysql.Connection:
        """The instance's admin: the account that ran `make sql`, by unix_socket."""
        return pymysql.connect(user=os_user(), unix_socket=str(self.socket), autocommit=True,
                               **kwargs)

    def admin_sql(self, sql: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(self.admin()) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())

    def connect_as(self, cfg_name: str, tcp: bool = False, **kwargs: Any) -> pymysql.Connection:
        """Log in with the values of etc/<cfg_name>, by the socket or by 127.0.0.1:port."""
        cfg = self.cfg(cfg_name)
        where: dict[str, Any] = ({"host": "127.0.0.1", "port": int(cfg["database_port"])}
                                 if tcp else {"unix_socket": cfg["database_socket"]})
        options: dict[str, Any] = {
            "user": cfg["database_username"], "password": cfg.get("database_password", ""),
            "database": cfg["database_name"], "autocommit": True, **where}
        options.update(kwargs)
        return pymysql.connect(**options)

    def remove(self) -> None:
        """Stop the instance (make sql-stop, then SIGKILL if still alive) and delete the copy."""
        with contextlib.suppress(Exception):
            self.make("sql-stop", check=False)
        pid = self.pid()
        if pid is not None and process_alive(pid) and \
                Path(f"/proc/{pid}/comm").read_text().strip() == "mariadbd":
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def require_mariadb_binaries() -> None:
    for binary in (MARIADBD, INSTALL_DB):
        if not binary.exists():
            skip_or_fail(f"{binary} is missing: install Debian's mariadb-server "
                         "(`make test` does, as root)")


@contextlib.contextmanager
def installation_after_make_sql(**env: str) -> Iterator[ScratchInstallation]:
    require_mariadb_binaries()
    inst = ScratchInstallation.create(**env)
    try:
        inst.make_sql_output = inst.make("sql")
        yield inst
    finally:
        inst.remove()


@pytest.fixture(scope="module")
def installation_with_sql() -> Iterator[ScratchInstallation]:
    """A scratch installation after a plain `make sql` (unix_socket; hq-server runs as you)."""
    with installation_after_make_sql() as inst:
        yield inst


@pytest.fixture(scope="module")
def installation_with_sql_password() -> Iterator[ScratchInstallation]:
    """A scratch installation after `HQ_DB_AUTH=password make sql`."""
    with installation_after_make_sql(HQ_DB_AUTH="password") as inst:
        yield inst


def test_make_sql_answers_on_socket_and_loopback_tcp(
        installation_with_sql: ScratchInstallation) -> None:
    inst = installation_with_sql
    rows = inst.admin_sql("SELECT @@port, @@bind_address, @@socket, @@character_set_server,"
                          " @@collation_server, @@default_storage_engine")
    assert rows == [(inst.port, "127.0.0.1", str(inst.socket), "utf8mb4",
                     "utf8mb4_unicode_ci", "InnoDB")]
    assert inst.admin_sql("SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM "
                          "information_schema.SCHEMATA WHERE SCHEMA_NAME = 'hq'") == [
        ("utf8mb4", "utf8mb4_unicode_ci")]
    # (without hq-dbadmin there are no views yet, so hq_report may not even USE hq)
    with contextlib.closing(inst.connect_as("hq-report.cfg", tcp=True, database=None)) as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == ("hq_report@127.0.0.1",)
    assert (inst.root / "hqConf" / "hqdb.cnf").read_text().count(f"port={inst.port}\n") == 2


def test_make_sql_writes_a_private_db_cfg_without_password(
        installation_with_sql: ScratchInstallation) -> None:
    inst = installation_with_sql
    path = inst.root / "etc" / "hq-db.cfg"
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    assert inst.cfg("hq-db.cfg") == {
        "database_dialect": "mysql", "database_host": "localhost",
        "database_port": str(inst.port), "database_socket": str(inst.socket),
        "database_name": "hq", "database_username": os_user()}
    assert "password" not in path.read_text()
    # and hq reads it as meant
    from hq.config import Installation, load_database
    db = load_database(Installation(inst.root))
    assert (db.dialect, db.name, db.username, db.password, db.socket) == (
        "mysql", "hq", os_user(), None, str(inst.socket))


def test_hq_servers_account_can_create_and_insert(
        installation_with_sql: ScratchInstallation) -> None:
    table = unique_name("probe_")
    with contextlib.closing(installation_with_sql.connect_as("hq-db.cfg")) as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == (f"{os_user()}@localhost",)
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute(f"INSERT INTO {table} VALUES (1, 'ü')")
        cur.execute(f"SELECT name FROM {table}")
        assert cur.fetchall() == (("ü",),)
        cur.execute(f"DROP TABLE {table}")


def assert_report_account_reads_only_views(inst: ScratchInstallation) -> None:
    views = [v for (v,) in inst.admin_sql(
        "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = 'hq'"
        " AND TABLE_NAME LIKE 'report\\_%'")]
    assert views, "hq-dbadmin upgrade made no report_* views"
    cfg = inst.cfg("hq-report.cfg")
    assert cfg["database_username"] == "hq_report"
    assert re.fullmatch(r"[0-9a-f]{64}", cfg["database_password"])
    for tcp in (False, True):
        with contextlib.closing(inst.connect_as("hq-report.cfg", tcp=tcp)) as conn, \
                conn.cursor() as cur:
            for view in views:
                cur.execute(f"SELECT * FROM hq.{view} LIMIT 1")
            for statement in ("SELECT * FROM hq.jobs", "INSERT INTO hq.jobs () VALUES ()",
                              f"INSERT INTO hq.{views[0]} () VALUES ()"):
                with pytest.raises(pymysql.MySQLError) as denied:
                    cur.execute(statement)
                assert denied.value.args[0] == ER_TABLEACCESS_DENIED, statement
            cur.execute("SHOW GRANTS")
            grants = sorted(g for (g,) in cur.fetchall())
    account = "`hq_report`@`127.0.0.1`"
    usage = [g for g in grants if g.startswith(f"GRANT USAGE ON *.* TO {account}")]
    assert len(usage) == 1   # log in (with a password), nothing else on the server
    assert sorted(set(grants) - set(usage)) == sorted(
        f"GRANT SELECT ON `hq`.`{v}` TO {account}" for v in views)


def test_report_account_selects_views_but_no_table(
        installation_with_sql: ScratchInstallation) -> None:
    assert_report_account_reads_only_views(installation_with_sql)
    tables = installation_with_sql.admin_sql(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'hq'"
        " AND TABLE_NAME = 'jobs'")
    assert tables == [(1,)]


def test_make_sql_again_changes_nothing(installation_with_sql: ScratchInstallation) -> None:
    inst = installation_with_sql
    files = [inst.root / "etc" / n for n in ("hq-db.cfg", "hq-report.cfg")] + [
        inst.root / "hqConf" / "hqdb.cnf"]
    before = [(f.read_bytes(), f.stat().st_ino, f.stat().st_mtime_ns) for f in files]
    pid = inst.pid()
    inst.make("sql")
    assert [(f.read_bytes(), f.stat().st_ino, f.stat().st_mtime_ns) for f in files] == before
    assert inst.pid() == pid
    with contextlib.closing(inst.connect_as("hq-report.cfg", tcp=True, database=None)):
        pass   # the report password did not change


def test_make_sql_stop_and_start(installation_with_sql: ScratchInstallation) -> None:
    inst = installation_with_sql
    pid = inst.pid()
    assert pid is not None and process_alive(pid)
    assert inst.make("sql-status", check=False).returncode == 0
    inst.make("sql-stop")
    assert not process_alive(pid)
    assert not inst.socket.exists()
    assert inst.make("sql-status", check=False).returncode != 0
    inst.make("sql-stop")   # stopping a stopped instance is fine
    inst.make("sql-start")
    assert inst.pid() not in (None, pid)
    assert inst.admin_sql("SELECT 1") == [(1,)]


def test_make_sql_password_mode(installation_with_sql_password: ScratchInstallation) -> None:
    inst = installation_with_sql_password
    path = inst.root / "etc" / "hq-db.cfg"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = inst.cfg("hq-db.cfg")
    assert cfg["database_username"] == "hq"
    password = cfg["database_password"]
    assert re.fullmatch(r"[0-9a-f]{64}", password)
    output = inst.make_sql_output
    assert output is not None
    assert password not in output.stdout + output.stderr
    report_password = inst.cfg("hq-report.cfg")["database_password"]
    log = (inst.root / "var" / "mariadb" / "mariadbd.err").read_text(errors="replace")
    assert password not in log and report_password not in log
    for tcp, host in ((False, "localhost"), (True, "127.0.0.1")):
        with contextlib.closing(inst.connect_as("hq-db.cfg", tcp=tcp)) as conn, \
                conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone() == (f"hq@{host}",)
            table = unique_name("probe_")
            cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
            cur.execute(f"INSERT INTO {table} VALUES (1)")
            cur.execute(f"DROP TABLE {table}")
    with pytest.raises(pymysql.MySQLError):   # a wrong password is refused
        pymysql.connect(user="hq", password="x" + password, unix_socket=str(inst.socket))
    # again: the same password still works; nothing rewritten
    before = path.read_bytes()
    inst.make("sql")
    assert path.read_bytes() == before
    inst.connect_as("hq-db.cfg").close()
    assert_report_account_reads_only_views(inst)

    # another mode keeps the file, with a warning, until a rewrite is asked for
    kept = inst.make("sql", HQ_DB_AUTH="unix_socket")
    assert "etc/hq-db.cfg uses password authentication; keeping it" in kept.stderr
    assert path.read_bytes() == before
    inst.make("sql", HQ_DB_AUTH="unix_socket", HQ_DB_REWRITE_CFG="yes")
    cfg = inst.cfg("hq-db.cfg")
    assert (cfg["database_username"], "database_password" in cfg) == (os_user(), False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert inst.cfg("hq-report.cfg")["database_password"] != report_password
    inst.connect_as("hq-db.cfg").close()
    inst.connect_as("hq-report.cfg", tcp=True, database=None).close()
    with pytest.raises(pymysql.MySQLError):   # the old report password is gone
        pymysql.connect(user="hq_report", password=report_password,
                        unix_socket=str(inst.socket))


def test_make_sql_leaves_a_db_cfg_for_another_database_alone() -> None:
    require_mariadb_binaries()
    inst = ScratchInstallation.create()
    try:
        (inst.root / "etc").mkdir()
        theirs = "[DATABASE]\ndatabase_dialect = sqlite\ndatabase_path = var/hq.db\n"
        (inst.root / "etc" / "hq-db.cfg").write_text(theirs)
        result = inst.make("sql", check=False)
        assert result.returncode != 0
        assert "etc/hq-db.cfg points at another database (dialect 'sqlite'" in result.stderr
        assert (inst.root / "etc" / "hq-db.cfg").read_text() == theirs
        assert sorted(p.name for p in (inst.root / "etc").iterdir()) == ["hq-db.cfg"]
        assert not (inst.root / "var" / "mariadb" / "data").exists()   # nothing started
    finally:
        inst.remove()


def test_make_sql_refuses_a_socket_path_over_107_bytes(tmp_path: Path) -> None:
    root = tmp_path / ("x" * 90)
    shutil.copytree(REPO / "scripts", root / "scripts")
    result = subprocess.run([str(root / "scripts" / "hq-sql.sh"), "setup"],
                            env=clean_env(HQ_DB_PORT=str(free_port())), capture_output=True,
                            text=True, check=False)
    assert result.returncode == 1
    assert "Unix sockets need under 108" in result.stderr
    assert not (root / "var").exists()


@pytest.mark.root
def test_make_sql_names_the_directory_mysql_cannot_enter(tmp_path: Path) -> None:
    require_mariadb_binaries()
    closed = tmp_path / "c"
    closed.mkdir(mode=0o700)
    shutil.copytree(REPO / "scripts", closed / "scripts")
    result = subprocess.run([str(closed / "scripts" / "hq-sql.sh"), "setup"],
                            env=clean_env(HQ_DB_PORT=str(free_port())), capture_output=True,
                            text=True, check=False)
    assert result.returncode == 1
    # the first directory on the way that `mysql` may not enter (pytest's are 0700 too)
    first_closed = next(p for p in [*reversed(closed.parents), closed]
                        if not p.stat().st_mode & 0o001)
    assert f"account 'mysql' cannot enter directory {first_closed} " in result.stderr


@pytest.mark.root
def test_make_sql_for_hq_server_running_as_another_account() -> None:
    """As root, `HQ_SERVER_USER=nobody make sql`: nobody's unix_socket account runs hq-server."""
    user = "nobody"
    can_enter = subprocess.run(["runuser", "-u", user, "--", "test", "-x",
                                str(REPO / "hqVE" / "bin" / "python")], check=False)
    if can_enter.returncode != 0:
        skip_or_fail(f"{user} cannot run {REPO}/hqVE: the repository lies in a directory "
                     "other accounts cannot enter")
    with installation_after_make_sql(HQ_SERVER_USER=user) as inst:
        path = inst.root / "etc" / "hq-db.cfg"
        assert (pwd.getpwuid(path.stat().st_uid).pw_name,
                stat.S_IMODE(path.stat().st_mode)) == (user, 0o600)
        cfg = inst.cfg("hq-db.cfg")
        assert (cfg["database_username"], "database_password" in cfg) == (user, False)
        probe = (
            "import configparser, pymysql, sys\n"
            "c = configparser.ConfigParser(); c.read(sys.argv[1]); d = c['DATABASE']\n"
            "conn = pymysql.connect(user=d['database_username'], database=d['database_name'],"
            " unix_socket=d['database_socket'], autocommit=True)\n"
            "cur = conn.cursor()\n"
            "cur.execute('SELECT CURRENT_USER()'); print(cur.fetchone()[0])\n"
            "cur.execute('CREATE TABLE probe_nobody (id INT PRIMARY KEY)')\n"
            "cur.execute('INSERT INTO probe_nobody VALUES (1)')\n"
            "cur.execute('DROP TABLE probe_nobody')\n")
        result = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", probe,
                                 str(path)], cwd="/", capture_output=True, text=True,
                                check=False)
        assert (result.returncode, result.stdout) == (0, f"{user}@localhost\n"), result.stderr
        assert_report_account_reads_only_views(inst)   # hq-dbadmin ran as nobody
        definers = inst.admin_sql("SELECT DISTINCT DEFINER FROM information_schema.VIEWS"
                                  " WHERE TABLE_SCHEMA = 'hq'")
        assert definers == [(f"{user}@localhost",)]


# ---------------------------------------------------------------------------- the fixtures

def test_db_config_is_a_fresh_empty_database(db_config: Any) -> None:
    import sqlalchemy

    from hq.db.engine import create_engine

    engine = create_engine(db_config)
    try:
        with engine.connect() as conn:
            assert sqlalchemy.inspect(conn).get_table_names() == []
            assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.mariadb
def test_mariadb_admin_sql_can_create_accounts(mariadb_admin_sql: Any,
                                               mariadb_server: Any) -> None:
    account = unique_name("u_")
    mariadb_admin_sql(f"CREATE USER '{account}'@'localhost' IDENTIFIED BY 'pw-for-test'")
    try:
        pymysql.connect(user=account, password="pw-for-test",
                        unix_socket=str(mariadb_server.socket)).close()
        assert mariadb_admin_sql("SELECT @@bind_address") == [("127.0.0.1",)]
    finally:
        mariadb_admin_sql(f"DROP USER '{account}'@'localhost'")


def test_hq_install_is_an_installation_hq_dbadmin_can_use(hq_install: Any,
                                                          db_config: Any) -> None:
    from hq.config import load_cluster, load_database, load_users

    db = load_database(hq_install)
    assert (db.dialect, db.name, db.username, db.socket, db.sqlite_path) == (
        db_config.dialect, db_config.name, db_config.username, db_config.socket,
        db_config.sqlite_path if db_config.dialect == "sqlite" else db.sqlite_path)
    assert [h.name for h in load_cluster(hq_install.cluster_tab)] == ["localhost"]
    assert [(u.name, u.is_admin) for u in load_users(hq_install.users_file)] == [
        (os_user(), True)]
    result = run_hq(hq_install, "hq.cli.dbadmin", "upgrade")
    assert result.returncode == 0, result.stderr

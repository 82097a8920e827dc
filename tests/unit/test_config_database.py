"""hq.config's etc/hq-db.cfg: the embedded default, the original hQ's keys, MariaDB's socket,
modes others may not read, and errors that never show the password."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fixtures.config_files import error_of, write

from hq.config import DatabaseConfig, Installation, load_database
from hq.db.engine import url_for

SAMPLES = Path(__file__).resolve().parents[2] / "etc"


def test_no_db_cfg_means_the_embedded_sqlite_database(inst: Installation) -> None:
    db = load_database(inst)
    path = inst.var / "db" / "hq.db"
    assert db == DatabaseConfig(dialect="sqlite", sqlite_path=path, sqlite_default=True)
    assert url_for(db).render_as_string() == f"sqlite:///{path}"
    assert db.describe() == f"sqlite:///{path} (from <embedded default>)"


def test_a_database_left_in_var_by_an_older_hq_is_used_until_it_moves(inst: Installation,
                                                                     ) -> None:
    inst.var.mkdir(exist_ok=True)
    (inst.var / "hq.db").write_bytes(b"")
    assert load_database(inst).sqlite_path == inst.var / "hq.db"
    (inst.var / "db").mkdir()
    (inst.var / "db" / "hq.db").write_bytes(b"")
    assert load_database(inst).sqlite_path == inst.var / "db" / "hq.db"


def test_a_configured_sqlite_path_is_not_the_default(inst: Installation) -> None:
    write(inst.db_cfg, "[DATABASE]\ndatabase_dialect = sqlite\ndatabase_path = data/jobs.db\n",
          mode=0o600)
    db = load_database(inst)
    assert (db.sqlite_path, db.sqlite_default) == (inst.root / "data" / "jobs.db", False)


ORIGINAL_DB_CFG = """[DATABASE]
database_host = db.example.org
database_port = 3307
database_dialect = mysql
database_name = hqdb
database_username = hquser
database_password = s3cr#t;pw
"""


def test_original_hq_db_cfg(inst: Installation) -> None:
    write(inst.db_cfg, ORIGINAL_DB_CFG, mode=0o600)
    db = load_database(inst)
    assert (db.dialect, db.host, db.port, db.name, db.username, db.password, db.socket) == \
        ("mysql", "db.example.org", 3307, "hqdb", "hquser", "s3cr#t;pw", None)
    url = url_for(db)
    assert (url.drivername, url.host, url.port, url.database, url.username, url.password) == \
        ("mysql+pymysql", "db.example.org", 3307, "hqdb", "hquser", "s3cr#t;pw")
    assert dict(url.query) == {"charset": "utf8mb4"}
    assert db.describe() == f"mysql://hquser:***@db.example.org:3307/hqdb (from {inst.db_cfg})"


def test_db_cfg_written_by_make_sql_uses_the_socket(inst: Installation) -> None:
    # what scripts/hq-sql.sh writes for unix_socket authentication (no password)
    write(inst.db_cfg, "# hq database connection, written by scripts/hq-sql.sh\n[DATABASE]\n"
          "database_dialect = mysql\ndatabase_host = localhost\ndatabase_port = 2114\n"
          "database_socket = var/mariadb/mysqld.sock\ndatabase_name = hq\n"
          "database_username = hqadmin\n", mode=0o600)
    db = load_database(inst)
    socket = str(inst.root / "var/mariadb/mysqld.sock")
    assert (db.socket, db.password, db.username) == (socket, None, "hqadmin")
    url = url_for(db)
    assert dict(url.query) == {"charset": "utf8mb4", "unix_socket": socket}
    assert (url.host, url.port, url.password) == (None, None, None)
    assert db.describe() == f"mysql://hqadmin@/hq?unix_socket={socket} (from {inst.db_cfg})"


@pytest.mark.parametrize("dialect", ["mariadb", "MySQL", "mysql+pymysql"])
def test_mariadb_is_mysql(inst: Installation, dialect: str) -> None:
    write(inst.db_cfg, f"[database]\ndatabase_dialect = {dialect}\ndatabase_username = u\n",
          mode=0o600)
    db = load_database(inst)
    assert (db.dialect, db.host, db.port, db.name) == ("mysql", "localhost", 3306, "hq")


def test_sqlite_path_is_relative_to_the_installation(inst: Installation) -> None:
    write(inst.db_cfg, "[DATABASE]\ndatabase_dialect = sqlite\ndatabase_path = data/jobs.db\n",
          mode=0o400)
    db = load_database(inst)
    assert url_for(db).database == str(inst.root / "data" / "jobs.db")


@pytest.mark.parametrize(("url", "expected"), [
    ("mysql://hq:pw@db:3306/hq", "mysql+pymysql://hq:pw@db:3306/hq?charset=utf8mb4"),
    ("mariadb://hq:pw@db/hq", "mariadb+pymysql://hq:pw@db/hq?charset=utf8mb4"),
    ("mysql+pymysql://hq:pw@db/hq?charset=latin1", "mysql+pymysql://hq:pw@db/hq?charset=latin1"),
    ("sqlite:////srv/hq/hq.db", "sqlite:////srv/hq/hq.db"),
])
def test_url_key_wins(inst: Installation, url: str, expected: str) -> None:
    write(inst.db_cfg, f"[DATABASE]\ndatabase_dialect = sqlite\nurl = {url}\n", mode=0o600)
    db = load_database(inst)
    assert url_for(db).render_as_string(hide_password=False) == expected
    assert db.dialect == ("sqlite" if url.startswith("sqlite") else "mysql")
    assert ":pw@" not in db.describe()


@pytest.mark.parametrize(("mode", "message"), [
    (0o644, "readable by others (mode 0644)"),
    (0o640, "readable by its group (mode 0640)"),
    (0o620, "writable by its group (mode 0620)"),
    (0o602, "writable by others (mode 0602)"),
])
def test_db_cfg_others_may_read_is_refused(in_installation: Installation, mode: int,
                                           message: str) -> None:
    write(in_installation.db_cfg, ORIGINAL_DB_CFG, mode=mode)
    error = error_of(load_database, Installation(Path(".")))
    assert error == (f"etc/hq-db.cfg: {message}: it holds database credentials; "
                     f"run: chmod 600 etc/hq-db.cfg")
    assert "s3cr" not in error


@pytest.mark.parametrize(("text", "message"), [
    ("[DATABASE]\ndatabase_dialect = mysql\ndatabase_password = s3cr#t\n",
     ": database_username: missing: mysql needs the account hq-server logs in as"),
    ("[DATABASE]\ndatabase_username = hq\ndatabase_password = s3cr#t\n",
     ": database_dialect: missing: use mysql (or mariadb) or sqlite"),
    ("[DATABASE]\ndatabase_dialect = postgres\ndatabase_password = s3cr#t\n",
     ':2: database_dialect: unknown dialect "postgres" (use mysql, mariadb or sqlite)'),
    ("[DATABASE]\ndatabase_dialect = mysql\ndatabase_username = hq\n"
     "database_password = s3cr#t\ndatabase_port = 33o6\n",
     ':5: database_port: not a port number (1..65535): "33o6"'),
    ("# hQ\n[DATABASE]\ndatabase_dialect = mysql\ndatabase_password = s3cr#t\n"
     "database_pasword = s3cr#t\n",
     ":5: database_pasword: unknown key in [DATABASE] (known: database_dialect, database_host, "
     "database_name, database_password, database_path, database_port, database_socket, "
     "database_username, url)"),
    ("[DATABASE]\ndatabase_dialect = mysql\n\n[SERVER]\nx = s3cr#t\n",
     ":4: unknown section [SERVER] (known: [database])"),
    ("[DATABASE]\ndatabase_dialect = mysql\ndatabase_password s3cr#t\n",
     ":3: not a 'key = value' line"),
    ("database_password = s3cr#t\n[DATABASE]\n", ":1: a key before the first [section] line"),
    ("[DATABASE]\ndatabase_password = s3cr#t\ndatabase_password = s3cr#t\n",
     ":3: database_password: duplicate key"),
    ("# only comments\n", ": missing [DATABASE] section"),
    ("[DATABASE]\nurl = https://s3cr#t@example.org/x\n",
     ':2: url: unsupported database "https" (use mysql, mariadb or sqlite)'),
    ("[DATABASE]\nurl = s3cr#t\n",
     ":2: url: not a URL (expected e.g. mysql://user:password@host/name)"),
])
def test_bad_db_cfg_names_the_line_and_never_the_password(
        in_installation: Installation, text: str, message: str) -> None:
    write(in_installation.db_cfg, text, mode=0o600)
    error = error_of(load_database, Installation(Path(".")))
    assert error == "etc/hq-db.cfg" + message
    assert "s3cr" not in error


@pytest.mark.parametrize(("url", "shown"), [
    ("sqlite:////srv/hq/hq.db", "sqlite:////srv/hq/hq.db"),
    ("mysql://hq@db/hq?unix_socket=/run/my.sock", "mysql://hq@db/hq"),
    ("mysql://hq:pa/ss?w@rd@db:3306/hq", "mysql://hq:***@db:3306/hq"),
    ("mysql+pymysql://hq:pw@[::1]:3306/hq", "mysql+pymysql://hq:***@[::1]:3306/hq"),
])
def test_describe_an_url(url: str, shown: str) -> None:
    assert DatabaseConfig(dialect="mysql", url=url, source="x").describe() == f"{shown} (from x)"


def test_password_is_not_in_repr_or_describe(inst: Installation) -> None:
    write(inst.db_cfg, ORIGINAL_DB_CFG + "url = mysql://hquser:s3cr%23t@db/hq?password=s3cr\n",
          mode=0o600)
    db = load_database(inst)
    assert db.password == "s3cr#t;pw"
    for shown in (repr(db), str(db), db.describe()):
        assert "s3cr" not in shown
    assert db.describe() == f"mysql://hquser:***@db/hq (from {inst.db_cfg})"
    plain = dataclasses.replace(db, url=None)
    assert "s3cr" not in plain.describe()
    assert "s3cr" not in repr(url_for(plain))



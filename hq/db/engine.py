"""Connecting to the database: every difference between SQLite and MariaDB lives here.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy timeout, so a
reader (hq-dbadmin, a report) never blocks hq-server. Its files hold every job's command,
directory and environment: they are created 0600 in a directory only their owner enters,
and opened only when nobody else can read them (``secure_sqlite_files``).

MariaDB connections are pre-pinged, and a whole transaction is retried when the server went
away or chose it as a deadlock victim.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc

from hq.config import DatabaseConfig
from hq.errors import DatabaseError, PermissionDenied

log = logging.getLogger(__name__)

T = TypeVar("T")

# MariaDB errors after which the same transaction may simply run again:
# 2006 server has gone away, 2013 lost connection, 1213 deadlock, 1205 lock wait timeout.
RETRYABLE_MYSQL_ERRORS = frozenset({2006, 2013, 1213, 1205})
SQLITE_BUSY_TIMEOUT_MS = 30_000
# The database and the files SQLite keeps beside it; SQLite gives them the database's mode.
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def url_for(db: DatabaseConfig) -> sa.URL:
    """The SQLAlchemy URL for ``db`` (pymysql driver, utf8mb4 on MySQL/MariaDB)."""
    if db.url is not None:
        url = sa.make_url(db.url)
        if url.drivername in ("mysql", "mariadb"):
            url = url.set(drivername=f"{url.drivername}+pymysql")
        if url.get_backend_name() in ("mysql", "mariadb") and "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
        return url
    if db.dialect == "sqlite":
        assert db.sqlite_path is not None, "a sqlite DatabaseConfig needs sqlite_path"
        return sa.URL.create("sqlite", database=os.path.abspath(db.sqlite_path))
    query = {"charset": "utf8mb4"}
    if db.socket is not None:
        query["unix_socket"] = db.socket
    return sa.URL.create(
        "mysql+pymysql", username=db.username, password=db.password,
        host=None if db.socket else db.host, port=None if db.socket else db.port,
        database=db.name, query=query)


def create_engine(db: DatabaseConfig) -> sa.Engine:
    """An Engine for ``db``, set up for its dialect; raises DatabaseError on a bad config."""
    url = url_for(db)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(db, url)
    if url.get_backend_name() in ("mysql", "mariadb"):
        return sa.create_engine(url, pool_pre_ping=True, pool_recycle=3600,
                                isolation_level="READ COMMITTED")
    raise DatabaseError(f"{db.source}: unsupported database dialect {url.get_backend_name()!r}"
                        " (use mysql or sqlite)")


def secure_sqlite_files(path: str | os.PathLike[str]) -> None:
    """Make sure the SQLite database at ``path`` is private to this account, or refuse it.

    A missing directory is made 0700 and a missing database file is created 0600 (an empty
    file is an empty database), so that SQLite's -wal and -shm files, which copy its mode, are
    private from the start. Existing files of ours that others may read are tightened to 0600.
    A file another account owns (a -wal planted in a shared directory, say) or a symbolic
    link is refused, and so is a directory that others may write without a sticky bit (they
    could swap the file).
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(directory)
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise PermissionDenied(f"the database directory {directory} may be written by others "
                               f"(mode {stat.S_IMODE(st.st_mode):04o}): run chmod 700 "
                               f"{directory}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    for name in (path + suffix for suffix in SQLITE_SUFFIXES):
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise PermissionDenied(f"database file {name} is not a regular file (a symbolic "
                                   "link?): refusing to use it")
        if st.st_uid != os.geteuid():
            raise PermissionDenied(f"database file {name} belongs to uid {st.st_uid}, not to "
                                   "you: run hq-server and hq-dbadmin as that account")
        if not st.st_mode & 0o077:
            continue
        try:
            os.chmod(name, 0o600)
        except OSError as err:
            raise PermissionDenied(
                f"database file {name} may be read by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}) and cannot be tightened ({err.strerror}): "
                f"run chmod 600 {name}") from None
        log.warning("database file %s: mode %04o tightened to 0600 (it holds every job's "
                    "command and environment)", name, stat.S_IMODE(st.st_mode))


def relocate_sqlite(old: os.PathLike[str] | str, new: os.PathLike[str] | str) -> bool:
    """Move the SQLite database ``old`` (with its -wal and -shm) to ``new`` if ``new`` does not
    exist yet; True when it moved. Only safe while no process has the database open: hq-server
    calls it at start, holding its pid lock, for the move from var/hq.db to var/db/hq.db."""
    old, new = os.fspath(old), os.fspath(new)
    if not os.path.exists(old) or os.path.exists(new):
        return False
    os.makedirs(os.path.dirname(new), mode=0o700, exist_ok=True)
    for suffix in ("-wal", "-shm", ""):  # the database last: it is what says "moved"
        if os.path.exists(old + suffix):
            os.replace(old + suffix, new + suffix)
    log.warning("database: moved %s to %s, a directory only this account enters", old, new)
    return True


def _sqlite_engine(db: DatabaseConfig, url: sa.URL) -> sa.Engine:
    if url.database and url.database != ":memory:":
        secure_sqlite_files(url.database)
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # pysqlite's own transaction handling defers BEGIN; turn it off and issue BEGIN
        # ourselves (below): IMMEDIATE takes the write lock up front, so two writers wait on the
        # busy timeout instead of one failing at once on a read-to-write upgrade.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # a reader must not take the write lock: it would hold up hq-server's writes
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


_READ_ONLY = "hq_read_only"


@contextmanager
def read_connection(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection for reading only: on SQLite its transaction takes no write lock."""
    with engine.connect() as conn:
        yield conn.execution_options(**{_READ_ONLY: True})


def is_mysql(engine: sa.Engine | sa.Connection) -> bool:
    return engine.dialect.name in ("mysql", "mariadb")


def _retryable(err: exc.DBAPIError) -> bool:
    if err.connection_invalidated:
        return True
    args = getattr(err.orig, "args", ())
    return bool(args) and args[0] in RETRYABLE_MYSQL_ERRORS


def run_in_transaction(engine: sa.Engine, work: Callable[[sa.Connection], T], *,
                       attempts: int = 4, what: str = "database transaction") -> T:
    """Run ``work(conn)`` in one transaction, committing at the end.

    ``work`` must be safe to run again from the start: on a lost connection or a deadlock the
    whole transaction is rolled back and retried with backoff, up to ``attempts`` times.
    """
    delay = 0.1
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                return work(conn)
        except exc.DBAPIError as err:
            if attempt < attempts and _retryable(err):
                log.warning("%s: retrying after %s (attempt %d of %d)", what,
                            type(err.orig).__name__, attempt, attempts)
                time.sleep(delay)
                delay *= 2
                continue
            raise
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class _Prepared:
    sql: str
    order: tuple[str, ...]                    # bind names in the order the driver wants them
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool


_prepared: dict[tuple[str, Any], _Prepared] = {}


def execute_many(conn: sa.Connection, key: Any, build: Callable[[], sa.Executable],
                 rows: Sequence[Mapping[str, Any]]) -> None:
    """Run one INSERT or UPDATE for many rows as one driver ``executemany``.

    ``build()`` makes the statement (its bind parameters typed, named as the rows' keys); it
    is compiled once per dialect and ``key``. Each value goes through its type's bind
    processor (UTC datetimes, enums) as SQLAlchemy would do it, but without SQLAlchemy's
    per-row parameter handling, which costs more than the database's own work for the
    thousands of rows of a batch or a submission."""
    if not rows:
        return
    dialect = conn.dialect
    prepared = _prepared.get((dialect.name, key))
    if prepared is None:
        compiled = build().compile(dialect=dialect)
        positional = bool(compiled.positional)
        order = tuple(compiled.positiontup or ()) if positional else tuple(compiled.binds)
        processors = tuple(compiled.binds[name].type.bind_processor(dialect) for name in order)
        prepared = _prepared[(dialect.name, key)] = _Prepared(
            compiled.string, order, processors, positional)
    steps = list(zip(prepared.order, prepared.processors, strict=True))
    if prepared.positional:
        params: list[Any] = [tuple(row[n] if fn is None else fn(row[n]) for n, fn in steps)
                             for row in rows]
    else:
        params = [{name: row[name] if fn is None else fn(row[name]) for name, fn in steps}
                  for row in rows]
    conn.exec_driver_sql(prepared.sql, params)


def describe_connect_error(db: DatabaseConfig, err: Exception) -> DatabaseError:
    """A one-line DatabaseError for a failure to reach ``db``, naming the config it came from."""
    orig = getattr(err, "orig", None) or err
    reason = " ".join(str(orig).split())
    return DatabaseError(f"cannot use database {db.describe()}: {reason}")


@contextmanager
def database_errors(db: DatabaseConfig) -> Iterator[None]:
    """Turn driver errors inside the block into one-line DatabaseErrors naming ``db``."""
    try:
        yield
    except exc.DBAPIError as err:
        raise describe_connect_error(db, err) from err

"""Connecting to the database: every difference between SQLite and MariaDB lives here.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy timeout, so a
reader (hq-dbadmin, a report) never blocks hq-server. MariaDB connections are pre-pinged, and a
whole transaction is retried when the server went away or chose it as a deadlock victim.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc

from hq.config import DatabaseConfig
from hq.errors import DatabaseError

log = logging.getLogger(__name__)

T = TypeVar("T")

# MariaDB errors after which the same transaction may simply run again:
# 2006 server has gone away, 2013 lost connection, 1213 deadlock, 1205 lock wait timeout.
RETRYABLE_MYSQL_ERRORS = frozenset({2006, 2013, 1213, 1205})
SQLITE_BUSY_TIMEOUT_MS = 30_000


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


def _sqlite_engine(db: DatabaseConfig, url: sa.URL) -> sa.Engine:
    if url.database and url.database != ":memory:":
        os.makedirs(os.path.dirname(url.database), exist_ok=True)
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
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


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

"""Revision 0004 on a database that holds jobs (SQLite and MariaDB): submissions get
``array_indexes`` (NULL for what was stored before, so those jobs verify as they did); a
downgrade is refused while an array signed as a whole has unfinished jobs, and goes through
once they ended."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from hq.db import migrate
from hq.db.engine import create_engine
from hq.errors import UsageError

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC).replace(tzinfo=None)


def _submission(conn: sa.Connection, sub_id: int, first: int, states: list[str]) -> None:
    conn.execute(sa.text(
        "INSERT INTO submissions (id, owner_id, submitted_at, submit_host, environment, umask,"
        " job_count, first_job_id) VALUES (:id, 1, :t, 'head', '{}', 18, :n, :first)"),
        {"id": sub_id, "t": NOW, "n": len(states), "first": first})
    for n, state in enumerate(states):
        conn.execute(sa.text(
            "INSERT INTO jobs (id, submission_id, array_index, owner_id, command, shell, cwd,"
            " cores, priority, stdout_path, stderr_path, excluded_hosts, requeue, state,"
            " submitted_at, restart_count, attempt) VALUES (:id, :sub, :ix, 1, 'true',"
            " '/bin/sh', '/tmp', 1, 0, 'o', 'e', '', 1, :state, :t, 0, 0)"),
            {"id": first + n, "sub": sub_id, "ix": n + 1, "state": state, "t": NOW})


def test_array_indexes_is_added_empty_and_a_downgrade_waits_for_such_arrays(db_config):
    engine = create_engine(db_config)
    migrate.upgrade(engine, "0003")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (id, name, retired, created_at, updated_at) "
                             "VALUES (1, 'alice', 0, :t, :t)"), {"t": NOW})
        _submission(conn, 7, 41, ["done", "pending"])
    migrate.upgrade(engine, "0004")
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT array_indexes FROM submissions")).one() == (None,)
        _submission(conn, 8, 50, ["done", "pending"])
        conn.execute(sa.text("UPDATE submissions SET array_indexes = '1-2' WHERE id = 8"))
    with pytest.raises(UsageError, match="1 unfinished job"):
        migrate.downgrade(engine, "0003")
    assert migrate.schema_status(engine).at_head   # nothing of the downgrade was left done
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET state = 'cancelled' WHERE id = 51"))
    migrate.downgrade(engine, "0003")
    with engine.connect() as conn:
        assert "array_indexes" not in {c["name"] for c in
                                       sa.inspect(conn).get_columns("submissions")}
        assert conn.execute(sa.text("SELECT COUNT(*) FROM jobs")).scalar() == 4
    migrate.upgrade(engine)
    assert migrate.schema_status(engine).at_head

"""Revision 0003 on a database that holds jobs (SQLite and MariaDB): the reasons jobs had in
``pending_reason`` are in ``state_reason`` afterwards, and back after a downgrade; arrays get
their first job's id; report_jobs shows the reason and the array."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from hq.db import migrate
from hq.db.engine import create_engine

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC).replace(tzinfo=None)


def _fill(conn: sa.Connection) -> None:
    conn.execute(sa.text("INSERT INTO users (id, name, retired, created_at, updated_at) "
                         "VALUES (1, 'alice', 0, :t, :t)"), {"t": NOW})
    conn.execute(sa.text(
        "INSERT INTO submissions (id, owner_id, submitted_at, submit_host, environment, umask,"
        " job_count) VALUES (7, 1, :t, 'head', '{}', 18, 2)"), {"t": NOW})
    for job_id, index, state, reason in ((41, 1, "failed", "exit status unknown"),
                                         (42, 2, "pending", "waiting for 2 free cores")):
        conn.execute(sa.text(
            "INSERT INTO jobs (id, submission_id, array_index, owner_id, command, shell, cwd,"
            " cores, priority, stdout_path, stderr_path, excluded_hosts, requeue, state,"
            " pending_reason, submitted_at, restart_count, attempt) VALUES (:id, 7, :ix, 1,"
            " 'true', '/bin/sh', '/tmp', 1, 0, 'o', 'e', '', 1, :state, :reason, :t, 0, 0)"),
            {"id": job_id, "ix": index, "state": state, "reason": reason, "t": NOW})


def test_reasons_and_arrays_are_carried_over_and_back(db_config):
    engine = create_engine(db_config)
    migrate.upgrade(engine, "0002")
    with engine.begin() as conn:
        _fill(conn)
    migrate.upgrade(engine, "0003")
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, state_reason, retries, retry_count, resubmit_of FROM jobs ORDER BY id"
        )).all()
        assert [tuple(r) for r in rows] == [(41, "exit status unknown", 0, 0, None),
                                            (42, "waiting for 2 free cores", 0, 0, None)]
        assert conn.execute(sa.text("SELECT first_job_id, array_cap FROM submissions")
                            ).one() == (41, None)
        report = conn.execute(sa.text("SELECT job_id, state_reason, array_id, array_index "
                                      "FROM report_jobs ORDER BY job_id")).all()
        assert [tuple(r) for r in report] == [(41, "exit status unknown", 41, 1),
                                              (42, "waiting for 2 free cores", 41, 2)]
    migrate.downgrade(engine, "0002")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pending_reason FROM jobs WHERE id = 41")
                            ).scalar() == "exit status unknown"
        assert "array_id" not in {c["name"] for c in sa.inspect(conn).get_columns("report_jobs")}
    migrate.upgrade(engine)
    assert migrate.schema_status(engine).at_head

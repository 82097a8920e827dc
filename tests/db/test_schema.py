"""What the schema promises to people who read the database directly."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from hq.db.engine import is_mysql
from hq.db.model import jobs, submissions, users
from hq.states import JobState

NOW = dt.datetime(2026, 11, 21, 12, 30, 15, 250000, tzinfo=dt.UTC)


def _add_job(conn: sa.Connection, **overrides: object) -> int:
    user_id = conn.execute(sa.select(users.c.id).where(users.c.name == "alice")).scalar()
    if user_id is None:
        user_id = conn.execute(sa.insert(users).values(
            name="alice", retired=False, created_at=NOW, updated_at=NOW)).inserted_primary_key[0]
    sub_id = conn.execute(sa.insert(submissions).values(
        owner_id=user_id, submitted_at=NOW, submit_host="head", environment={"PATH": "/bin"},
        umask=0o022, job_count=1)).inserted_primary_key[0]
    values = {"submission_id": sub_id, "owner_id": user_id, "command": "sleep 42",
              "shell": "/bin/sh", "cwd": "/home/alice", "stdout_path": "hq-%j.out",
              "stderr_path": "hq-%j.err", "submitted_at": NOW}
    values.update(overrides)
    return conn.execute(sa.insert(jobs).values(**values)).inserted_primary_key[0]


def test_states_are_stored_as_readable_words(engine):
    with engine.begin() as conn:
        job_id = _add_job(conn, state=JobState.RUNNING)
        raw = conn.exec_driver_sql(f"SELECT state FROM jobs WHERE id = {job_id}").scalar()
    assert raw == "running"


def test_an_unknown_state_word_is_refused_by_the_database(engine):
    with engine.begin() as conn:
        job_id = _add_job(conn)
    # SQLite reports a CHECK failure as IntegrityError, MariaDB as error 4025 (OperationalError)
    with pytest.raises(sa.exc.DBAPIError, match=r"(?i)check|constraint"), engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE jobs SET state = 'exploded' WHERE id = {job_id}")


def test_times_round_trip_as_utc_with_microseconds(engine):
    started = dt.datetime(2026, 11, 21, 13, 30, 15, 123456,
                          tzinfo=dt.timezone(dt.timedelta(hours=1)))
    with engine.begin() as conn:
        job_id = _add_job(conn, started_at=started)
        back = conn.execute(sa.select(jobs.c.started_at).where(jobs.c.id == job_id)).scalar()
        raw = conn.exec_driver_sql(f"SELECT started_at FROM jobs WHERE id = {job_id}").scalar()
    assert back == started and back.tzinfo == dt.UTC
    assert str(raw).startswith("2026-11-21 12:30:15.123456")


def test_a_naive_time_is_refused_before_it_reaches_the_database(engine):
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), engine.begin() as conn:
        _add_job(conn, started_at=dt.datetime(2026, 1, 1))


def test_environment_is_stored_as_json_text(engine):
    env = {"PATH": "/usr/bin", "LANG": "de_DE.UTF-8", "Ü": "ünïcödé ✓"}
    with engine.begin() as conn:
        user_id = conn.execute(sa.insert(users).values(
            name="bob", retired=False, created_at=NOW, updated_at=NOW)).inserted_primary_key[0]
        sub_id = conn.execute(sa.insert(submissions).values(
            owner_id=user_id, submitted_at=NOW, submit_host="h", environment=env, umask=18,
            job_count=1)).inserted_primary_key[0]
        back = conn.execute(sa.select(submissions.c.environment)
                            .where(submissions.c.id == sub_id)).scalar()
    assert back == env


def test_report_views_show_jobs_without_commands_or_paths(engine):
    with engine.begin() as conn:
        _add_job(conn, state=JobState.DONE, started_at=NOW + dt.timedelta(seconds=90),
                 ended_at=NOW + dt.timedelta(seconds=150), exit_code=0, cpu_time_s=30.0)
        row = conn.exec_driver_sql("SELECT * FROM report_jobs").mappings().one()
        day = conn.exec_driver_sql("SELECT * FROM report_user_days").mappings().one()
    assert row["owner"] == "alice" and row["state"] == "done"
    assert row["wait_s"] == pytest.approx(90.0) and row["run_s"] == pytest.approx(60.0)
    assert not {"command", "cwd", "environment", "stdout_path", "name"} & set(row)
    assert day["owner"] == "alice" and day["jobs"] == 1 and day["done"] == 1
    assert float(day["cpu_hours"]) == pytest.approx(30 / 3600)


# storage engines and character sets exist on MariaDB only: the test runs there alone
@pytest.mark.parametrize("db_config", [pytest.param("mariadb", marks=pytest.mark.mariadb)],
                         indirect=True)
def test_mariadb_tables_are_innodb_utf8mb4(engine):
    assert is_mysql(engine)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT table_name, engine, table_collation FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'").all()
    assert rows
    for name, storage, collation in rows:
        assert storage == "InnoDB", name
        assert collation.startswith("utf8mb4"), name

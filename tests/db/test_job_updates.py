"""Batched job updates keep every job's own order of changes, on both backends.

The regression behind this file: one batch holding [job K ended, job J started, job J ended]
was written as one executemany per set of columns, in the order each set was first seen, so the
"ended" statement (K and J) ran before the "started" one (J) and J's row ended up ``running``
with an end time. At 100,000 jobs a few dozen rows a run stayed ``running`` for ever.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
import sqlalchemy as sa

from hq.db.jobs import update_jobs
from hq.db.model import jobs, submissions, users
from hq.states import JobState

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
HOSTS: dict[str, int] = {}   # no host is named in these changes


def dispatched_jobs(engine: sa.Engine, count: int) -> list[int]:
    """``count`` jobs of one submission, all ``dispatched`` (as a scheduling round leaves them)."""
    with engine.begin() as conn:
        user_id = conn.execute(sa.insert(users).values(
            name="alice", retired=False, created_at=T0, updated_at=T0)).inserted_primary_key[0]
        sub_id = conn.execute(sa.insert(submissions).values(
            owner_id=user_id, submitted_at=T0, submit_host="head", environment={},
            umask=0o022, job_count=count)).inserted_primary_key[0]
        conn.execute(sa.insert(jobs), [
            {"id": i, "submission_id": sub_id, "owner_id": user_id, "command": "true",
             "shell": "/bin/sh", "cwd": "/tmp", "stdout_path": "/dev/null",
             "stderr_path": "/dev/null", "submitted_at": T0, "state": JobState.DISPATCHED}
            for i in range(1, count + 1)])
    return list(range(1, count + 1))


def started(n: int) -> dict[str, object]:
    return {"state": JobState.RUNNING, "pid": 1000 + n, "started_at": T0}


def ended(n: int) -> dict[str, object]:
    return {"state": JobState.DONE, "pid": 1000 + n, "exit_code": 0, "ended_at": T0,
            "cpu_time_s": 0.001, "max_rss_kb": 1024, "started_at": T0}


def rows(engine: sa.Engine) -> dict[int, tuple[JobState, int | None, dt.datetime | None]]:
    with engine.connect() as conn:
        return {r.id: (r.state, r.exit_code, r.ended_at) for r in conn.execute(
            sa.select(jobs.c.id, jobs.c.state, jobs.c.exit_code, jobs.c.ended_at))}


def test_a_job_that_starts_and_ends_after_another_job_ended_is_done(engine):
    k, j = dispatched_jobs(engine, 2)
    with engine.begin() as conn:
        # K's start came in an earlier batch; this one: K ended, J started, J ended
        update_jobs(conn, [(k, started(k))], HOSTS)
    with engine.begin() as conn:
        update_jobs(conn, [(k, ended(k)), (j, started(j)), (j, ended(j))], HOSTS)
    assert rows(engine) == {k: (JobState.DONE, 0, T0), j: (JobState.DONE, 0, T0)}


def test_shuffled_start_and_end_pairs_of_many_jobs_all_end_done(engine):
    ids = dispatched_jobs(engine, 300)
    already_running, new = ids[:150], ids[150:]
    with engine.begin() as conn:
        update_jobs(conn, [(i, started(i)) for i in already_running], HOSTS)
    rng = random.Random(7)
    # The next batch interleaves the running jobs' ends with other jobs' start and end, at
    # random but keeping each job's start before its end, as the exec-servers' reports arrive.
    queues = {i: [(i, ended(i))] for i in already_running[1:]}
    queues.update({i: [(i, started(i)), (i, ended(i))] for i in new})
    batch = [(already_running[0], ended(already_running[0]))]  # the shape that lost states
    while queues:
        job_id = rng.choice(list(queues))
        batch.append(queues[job_id].pop(0))
        if not queues[job_id]:
            del queues[job_id]
    with engine.begin() as conn:
        update_jobs(conn, batch, HOSTS)
    final = rows(engine)
    assert {job_id for job_id, (state, _c, _e) in final.items() if state is not JobState.DONE
            } == set()
    assert all(end == T0 and code == 0 for _state, code, end in final.values())


def test_a_later_change_of_a_column_wins_over_an_earlier_one(engine):
    (job,) = dispatched_jobs(engine, 1)
    with engine.begin() as conn:
        update_jobs(conn, [(job, {"state": JobState.PENDING, "reason": "requeued"}),
                           (job, {"state": JobState.DISPATCHED, "reason": None}),
                           (job, started(job))], HOSTS)
    with engine.connect() as conn:
        row = conn.execute(sa.select(jobs.c.state, jobs.c.state_reason, jobs.c.pid)).one()
    assert tuple(row) == (JobState.RUNNING, None, 1000 + job)


def test_columns_outside_the_outcome_are_refused(engine):
    (job,) = dispatched_jobs(engine, 1)
    with pytest.raises(ValueError, match="command"), engine.begin() as conn:
        update_jobs(conn, [(job, {"command": "rm -rf ~"})], HOSTS)

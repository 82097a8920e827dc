"""Dependencies between jobs in the database (the ``job_dependencies`` table), and what a
submission that names other jobs needs to know about them.

Each row is one pair: ``job_id`` may start only after ``depends_on_id`` ended as ``kind``
says (an array named as a whole is a row per element). Rows are written with the submission
that makes them, in its transaction, and stay for show and reports after both jobs ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from hq.db.engine import execute_many
from hq.db.model import job_dependencies, jobs, submissions
from hq.states import FINISHED_JOB_STATES, DependencyKind, JobState

CHUNK = 1000   # ids per IN (...): bounds every statement's parameters


@dataclass(frozen=True, slots=True)
class Target:
    """A job a new submission names in ``--dependency``."""

    id: int
    state: JobState
    array_index: int | None
    submission_id: int
    first_job_id: int | None    # its array's id
    job_count: int              # how many jobs its submission has


def insert_dependencies(conn: sa.Connection,
                        rows: Sequence[tuple[int, int, DependencyKind]]) -> None:
    """(job, depends on, kind) rows, in the caller's transaction."""
    if rows:
        execute_many(conn, ("insert dependencies",), lambda: sa.insert(job_dependencies),
                     [{"job_id": j, "depends_on_id": on, "kind": kind} for j, on, kind in rows])


def find_targets(conn: sa.Connection, owner_id: int, ids: Iterable[int]) -> dict[int, Target]:
    """The jobs among ``ids`` that belong to ``owner_id`` (another user's are left out,
    exactly as if they did not exist)."""
    found: dict[int, Target] = {}
    wanted = sorted(set(ids))
    query = (sa.select(jobs.c.id, jobs.c.state, jobs.c.array_index, jobs.c.submission_id,
                       submissions.c.first_job_id, submissions.c.job_count)
             .join(submissions, submissions.c.id == jobs.c.submission_id)
             .where(jobs.c.owner_id == owner_id))
    for start in range(0, len(wanted), CHUNK):
        for row in conn.execute(query.where(jobs.c.id.in_(wanted[start:start + CHUNK]))):
            found[row.id] = Target(row.id, row.state, row.array_index, row.submission_id,
                                   row.first_job_id, row.job_count)
    return found


def array_elements(conn: sa.Connection, submission_id: int) -> dict[int, tuple[int, JobState]]:
    """An array's elements: index -> (job id, state)."""
    query = (sa.select(jobs.c.array_index, jobs.c.id, jobs.c.state)
             .where(jobs.c.submission_id == submission_id, jobs.c.array_index.is_not(None)))
    return {row.array_index: (row.id, row.state) for row in conn.execute(query)}


def load_dependencies(conn: sa.Connection) -> list[tuple[int, int, DependencyKind, JobState]]:
    """(job, depends on, kind, that job's state) of every unfinished job (server start)."""
    dependant, target = jobs.alias("dependant"), jobs.alias("target")
    unfinished = [s for s in JobState if s not in FINISHED_JOB_STATES]
    query = (sa.select(job_dependencies.c.job_id, job_dependencies.c.depends_on_id,
                       job_dependencies.c.kind, target.c.state)
             .join(dependant, dependant.c.id == job_dependencies.c.job_id)
             .join(target, target.c.id == job_dependencies.c.depends_on_id)
             .where(dependant.c.state.in_(unfinished)))
    return [tuple(row) for row in conn.execute(query)]  # type: ignore[misc]


def dependencies_of(conn: sa.Connection, job_id: int
                    ) -> list[tuple[int, DependencyKind, JobState]]:
    """What ``job_id`` depends on: (job, kind, its state now), in id order."""
    query = (sa.select(job_dependencies.c.depends_on_id, job_dependencies.c.kind, jobs.c.state)
             .join(jobs, jobs.c.id == job_dependencies.c.depends_on_id)
             .where(job_dependencies.c.job_id == job_id)
             .order_by(job_dependencies.c.depends_on_id))
    return [tuple(row) for row in conn.execute(query)]  # type: ignore[misc]


def rewire_dependencies(conn: sa.Connection, moves: Sequence[tuple[int, int, int]]) -> None:
    """(dependant, old, new): the dependant waits for ``new`` instead of ``old``."""
    if moves:
        execute_many(conn, ("rewire dependencies",), lambda: (
            sa.update(job_dependencies)
            .where(job_dependencies.c.job_id == sa.bindparam("b_job"),
                   job_dependencies.c.depends_on_id == sa.bindparam("b_old"))
            .values(depends_on_id=sa.bindparam("b_new"))),
            [{"b_job": j, "b_old": old, "b_new": new} for j, old, new in moves])

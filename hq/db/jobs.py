"""Jobs and submissions: the one mapping between ``hq.job.Job`` and the jobs table.

Every rename between a job's Python attributes and its columns is here and nowhere else
(buildbot's ``_model_from_row`` style): ``spec.group`` <-> ``group_name``, ``spec.stdout`` /
``spec.stderr`` <-> ``stdout_path`` / ``stderr_path`` (templates, as submitted),
``spec.excluded_hosts`` (a tuple) <-> ``excluded_hosts`` (comma-separated),
``spec.constraint`` <-> ``constraint_expr``, ``reason`` <-> ``state_reason``, ``signal``
<-> ``signal_number``, ``host`` (a name) <-> ``host_id``.

hq-server keeps live jobs in memory and writes through here; every function takes the
caller's connection, so one transaction can carry a whole batch of changes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from hq.db.engine import execute_many
from hq.db.model import hosts, job_attempts, jobs, submissions, users
from hq.job import OUTCOME_FIELDS, Job, Submission
from hq.jobspec import JobSpec
from hq.states import FINISHED_JOB_STATES, JobState

# Job attribute -> column, where they differ (outcome attributes; the spec's are below).
_OUTCOME_COLUMNS = {"reason": "state_reason", "signal": "signal_number", "host": "host_id"}


def job_row(job: Job) -> dict[str, Any]:
    """The jobs row of a new job (its spec and its first outcome)."""
    spec = job.spec
    return {
        "id": job.id, "submission_id": job.submission_id, "array_index": spec.array_index,
        "owner_id": job.owner_id, "name": spec.name, "command": spec.command,
        "shell": spec.shell, "cwd": spec.cwd, "cores": spec.cores, "memory_mb": spec.memory_mb,
        "priority": spec.priority, "group_name": spec.group, "info_text": spec.info_text,
        "time_limit_s": spec.time_limit_s, "estimated_time_s": spec.estimated_time_s,
        "estimated_memory_mb": spec.estimated_memory_mb, "stdout_path": spec.stdout,
        "stderr_path": spec.stderr, "log_path": spec.log_path,
        "excluded_hosts": ",".join(spec.excluded_hosts), "requeue": spec.requeue,
        "retries": spec.retries, "constraint_expr": spec.constraint, "gpus": spec.gpus,
        "gpu_ids": job.gpu_ids,
        "signature": spec.signature, "state": job.state,
        "state_reason": job.reason, "resubmit_of": job.resubmit_of,
        "submitted_at": job.submitted_at, "eligible_at": job.eligible_at,
        "restart_count": job.restart_count, "attempt": job.attempt,
        "retry_count": job.retry_count,
    }


def job_from_row(row: Mapping[str, Any]) -> Job:
    """A job as its row has it (the owner's and host's names joined in as ``owner``, ``host``)."""
    spec = JobSpec(
        command=row["command"], cwd=row["cwd"], shell=row["shell"], name=row["name"],
        cores=row["cores"], memory_mb=row["memory_mb"], priority=row["priority"],
        group=row["group_name"], info_text=row["info_text"], time_limit_s=row["time_limit_s"],
        estimated_time_s=row["estimated_time_s"],
        estimated_memory_mb=row["estimated_memory_mb"], stdout=row["stdout_path"],
        stderr=row["stderr_path"], log_path=row["log_path"],
        excluded_hosts=tuple(h for h in row["excluded_hosts"].split(",") if h),
        requeue=row["requeue"], retries=row["retries"], constraint=row["constraint_expr"],
        gpus=row["gpus"],
        array_index=row["array_index"],
        array_indexes=None if row["array_index"] is None else row.get("array_indexes"),
        signature=row["signature"])
    return Job(id=row["id"], submission_id=row["submission_id"], owner=row["owner"],
               owner_id=row["owner_id"], spec=spec, submitted_at=row["submitted_at"],
               state=row["state"], reason=row["state_reason"], host=row["host"],
               pid=row["pid"], exit_code=row["exit_code"], signal=row["signal_number"],
               eligible_at=row["eligible_at"], started_at=row["started_at"],
               ended_at=row["ended_at"], cpu_time_s=row["cpu_time_s"],
               max_rss_kb=row["max_rss_kb"], restart_count=row["restart_count"],
               attempt=row["attempt"], retry_count=row["retry_count"],
               gpu_ids=row["gpu_ids"],
               resubmit_of=row["resubmit_of"],
               array_id=None if row["array_index"] is None else row.get("first_job_id"))


def insert_submission(conn: sa.Connection, submission: Submission, owner_id: int,
                      new_jobs: Sequence[Job]) -> None:
    """Insert one submission and its jobs (ids chosen by the caller) in the caller's
    transaction; executemany keeps 100,000 jobs to one round trip per chunk on MariaDB."""
    conn.execute(sa.insert(submissions), [{
        "id": submission.id, "owner_id": owner_id, "submitted_at": submission.submitted_at,
        "submit_host": submission.submit_host, "environment": submission.environment,
        "umask": submission.umask, "job_count": submission.job_count,
        "first_job_id": submission.first_job_id, "array_cap": submission.cap,
        "array_indexes": submission.array_indexes,
        "notify": submission.notify, "mail_user": submission.mail_user,
        "mail_type": submission.mail_type, "notify_signature": submission.notify_signature,
        "kill_on_invalid_dep": submission.kill_on_invalid_dep}])
    insert_jobs(conn, new_jobs)


def insert_jobs(conn: sa.Connection, new_jobs: Sequence[Job]) -> None:
    """Insert jobs of a stored submission (a submit's, or the next elements of an array
    being laid out) in the caller's transaction."""
    rows = [job_row(job) for job in new_jobs]
    if rows:
        columns = tuple(rows[0])
        execute_many(conn, ("insert jobs", columns), lambda: sa.insert(jobs).values(
            {c: sa.bindparam(c, type_=jobs.c[c].type) for c in columns}), rows)


def insert_attempts(conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """job_attempts rows (hq.server.retries), in the caller's transaction."""
    if rows:
        execute_many(conn, ("insert attempts", tuple(rows[0])),
                     lambda: sa.insert(job_attempts), rows)


def list_attempts(conn: sa.Connection, job_id: int) -> list[dict[str, Any]]:
    """A job's runs, in order."""
    query = (sa.select(job_attempts).where(job_attempts.c.job_id == job_id)
             .order_by(job_attempts.c.attempt))
    return [dict(row) for row in conn.execute(query).mappings()]


def submission_environments(conn: sa.Connection, ids: Collection[int]
                            ) -> dict[int, tuple[dict[str, str], int]]:
    """The environment and umask of each of these submissions."""
    wanted = sorted(ids)
    found: dict[int, tuple[dict[str, str], int]] = {}
    for start in range(0, len(wanted), 1000):
        query = (sa.select(submissions.c.id, submissions.c.environment, submissions.c.umask)
                 .where(submissions.c.id.in_(wanted[start:start + 1000])))
        found.update({row.id: (row.environment, row.umask) for row in conn.execute(query)})
    return found


def submission_counts(conn: sa.Connection, submission_id: int) -> dict[str, int]:
    """How many jobs of a submission are in each state."""
    query = (sa.select(jobs.c.state, sa.func.count()).where(jobs.c.submission_id == submission_id)
             .group_by(jobs.c.state))
    return {str(state): n for state, n in conn.execute(query)}


def finished_counts(conn: sa.Connection, submission_ids: Collection[int]
                    ) -> dict[int, dict[JobState, int]]:
    """How many jobs of each of these submissions ended in each state (server start)."""
    wanted = sorted(submission_ids)
    found: dict[int, dict[JobState, int]] = {}
    for start in range(0, len(wanted), 1000):
        query = (sa.select(jobs.c.submission_id, jobs.c.state, sa.func.count())
                 .where(jobs.c.submission_id.in_(wanted[start:start + 1000]),
                        jobs.c.state.in_(FINISHED_JOB_STATES))
                 .group_by(jobs.c.submission_id, jobs.c.state))
        for submission_id, state, n in conn.execute(query):
            found.setdefault(submission_id, {})[JobState(state)] = n
    return found


def mark_notified(conn: sa.Connection, submission_id: int, at: Any) -> None:
    conn.execute(sa.update(submissions).where(submissions.c.id == submission_id)
                 .values(notified_at=at))


def unnotified_submissions(conn: sa.Connection) -> list[tuple[Submission, dict[str, int]]]:
    """Submissions that asked to be told when they end, have ended, and were not told."""
    unfinished = [s for s in JobState if s not in FINISHED_JOB_STATES]
    open_jobs = sa.select(jobs.c.id).where(jobs.c.submission_id == submissions.c.id,
                                           jobs.c.state.in_(unfinished))
    query = (sa.select(submissions, users.c.name.label("owner"))
             .join(users, users.c.id == submissions.c.owner_id)
             .where(submissions.c.notified_at.is_(None),
                    sa.or_(submissions.c.notify.is_not(None),
                           submissions.c.mail_user.is_not(None)),
                    ~sa.exists(open_jobs),
                    # an array being laid out has not ended, however its stored jobs did
                    sa.or_(submissions.c.array_indexes.is_(None),
                           _stored_jobs() >= submissions.c.job_count)))
    found = []
    for r in conn.execute(query):
        sub = Submission(id=r.id, owner=r.owner, environment={}, umask=r.umask,
                         first_job_id=r.first_job_id, notify=r.notify, mail_user=r.mail_user,
                         mail_type=r.mail_type, notify_signature=r.notify_signature)
        found.append((sub, submission_counts(conn, r.id)))
    return found


def set_array_cap(conn: sa.Connection, submission_id: int, cap: int | None) -> None:
    conn.execute(sa.update(submissions).where(submissions.c.id == submission_id)
                 .values(array_cap=cap))


def update_jobs(conn: sa.Connection, changes: Iterable[tuple[int, Mapping[str, Any]]],
                host_ids: Mapping[str, int]) -> None:
    """Apply outcome changes (Job attribute -> new value), in order, in the caller's
    transaction; ``host_ids`` maps host names to their rows.

    Each job's changes are folded into one row update first (a later value of a column wins),
    and only then are rows with the same set of columns written by one executemany: grouping
    the raw changes would let a group seen first (job K ended) carry a later change of another
    job (J ended) past that job's earlier one (J started), leaving J ``running`` for ever.
    """
    folded: dict[int, dict[str, Any]] = {}
    for job_id, values in changes:
        unknown = set(values) - OUTCOME_FIELDS
        if unknown:
            raise ValueError(f"job {job_id}: not outcome fields: {sorted(unknown)}")
        row = folded.setdefault(job_id, {})
        for name, value in values.items():
            if name == "host":
                value = None if value is None else host_ids[value]
            row[_OUTCOME_COLUMNS.get(name, name)] = value
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for job_id, row in folded.items():
        by_columns[tuple(sorted(row))].append({"b_id": job_id, **row})
    for columns, rows in by_columns.items():
        execute_many(conn, ("update jobs", columns), lambda columns=columns: (
            sa.update(jobs).where(jobs.c.id == sa.bindparam("b_id", type_=jobs.c.id.type))
            .values({c: sa.bindparam(c, type_=jobs.c[c].type) for c in columns})), rows)


def _job_query() -> sa.Select[Any]:
    return (sa.select(jobs, users.c.name.label("owner"), hosts.c.name.label("host"),
                      submissions.c.first_job_id, submissions.c.array_indexes)
            .join(users, users.c.id == jobs.c.owner_id)
            .join(submissions, submissions.c.id == jobs.c.submission_id)
            .outerjoin(hosts, hosts.c.id == jobs.c.host_id))


def load_unfinished(conn: sa.Connection) -> tuple[list[Submission], list[Job]]:
    """Every job that has not finished, with the submissions they belong to (server start)."""
    unfinished = [s for s in JobState if s not in FINISHED_JOB_STATES]
    found = [job_from_row(r) for r in conn.execute(
        _job_query().where(jobs.c.state.in_(unfinished)).order_by(jobs.c.id)).mappings()]
    wanted = sorted({j.submission_id for j in found})
    subs: list[Submission] = []
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start:start + 1000]
        subs.extend(_submission(r) for r in conn.execute(
                        sa.select(submissions, users.c.name.label("owner"))
                        .join(users, users.c.id == submissions.c.owner_id)
                        .where(submissions.c.id.in_(chunk))))
    return subs, found


def _stored_jobs() -> sa.ScalarSelect[Any]:
    return (sa.select(sa.func.count()).select_from(jobs)
            .where(jobs.c.submission_id == submissions.c.id).scalar_subquery())


def unlaid_arrays(conn: sa.Connection) -> list[tuple[Submission, int, int]]:
    """The arrays accepted whose elements are not all stored (hq.server.layout), with their
    owner's id and how many of their elements are stored."""
    stored = _stored_jobs()
    query = (sa.select(submissions, users.c.name.label("owner"), stored.label("stored"))
             .join(users, users.c.id == submissions.c.owner_id)
             .where(submissions.c.array_indexes.is_not(None),
                    stored < submissions.c.job_count))
    return [(_submission(r), r.owner_id, r.stored) for r in conn.execute(query)]


def _submission(r: sa.Row[Any]) -> Submission:
    return Submission(id=r.id, owner=r.owner, environment=r.environment, umask=r.umask,
                      submitted_at=r.submitted_at, submit_host=r.submit_host,
                      job_count=r.job_count, first_job_id=r.first_job_id, cap=r.array_cap,
                      array_indexes=r.array_indexes, notify=r.notify, mail_user=r.mail_user,
                      mail_type=r.mail_type, notify_signature=r.notify_signature,
                      kill_on_invalid_dep=r.kill_on_invalid_dep)


def element_ids(conn: sa.Connection, submission_id: int, indexes: Sequence[int]
                ) -> dict[int, int]:
    """The job id of each of these array indexes of a submission that is stored (served by
    the (submission, array index) index)."""
    found: dict[int, int] = {}
    for start in range(0, len(indexes), 1000):   # bound every statement's parameters
        query = (sa.select(jobs.c.array_index, jobs.c.id)
                 .where(jobs.c.submission_id == submission_id,
                        jobs.c.array_index.in_(list(indexes[start:start + 1000]))))
        found.update({index: job_id for index, job_id in conn.execute(query)})
    return found


def cancelled_element(conn: sa.Connection, submission_id: int) -> Job | None:
    """One cancelled job of a submission, if it has any (the latest)."""
    row = conn.execute(_job_query().where(jobs.c.submission_id == submission_id,
                                          jobs.c.state == JobState.CANCELLED)
                       .order_by(jobs.c.id.desc()).limit(1)).mappings().first()
    return None if row is None else job_from_row(row)


def find_job(conn: sa.Connection, job_id: int) -> Job | None:
    row = conn.execute(_job_query().where(jobs.c.id == job_id)).mappings().first()
    return None if row is None else job_from_row(row)


def list_finished_jobs(conn: sa.Connection, owner_id: int, *, limit: int,
                       ids: Sequence[int] | None = None, before: int | None = None,
                       states: Collection[JobState] | None = None,
                       group: str | None = None, submission_id: int | None = None
                       ) -> list[Job]:
    """An owner's finished jobs (in ``states``, of ``group``, with ids below ``before``),
    newest first, at most ``limit``: served by the (owner, state) index."""
    finished = [s for s in FINISHED_JOB_STATES if states is None or s in states]
    if not finished:
        return []
    query = (_job_query().where(jobs.c.owner_id == owner_id, jobs.c.state.in_(finished))
             .order_by(jobs.c.id.desc()).limit(limit))
    if before is not None:
        query = query.where(jobs.c.id < before)
    if group is not None:
        query = query.where(jobs.c.group_name == group)
    if submission_id is not None:
        query = query.where(jobs.c.submission_id == submission_id)
    if ids is None:
        return [job_from_row(r) for r in conn.execute(query).mappings()]
    found: list[Job] = []
    for start in range(0, len(ids), 1000):   # bound every statement's parameters
        chunk = list(ids[start:start + 1000])
        found += [job_from_row(r) for r in
                  conn.execute(query.where(jobs.c.id.in_(chunk))).mappings()]
    return sorted(found, key=lambda j: -j.id)[:limit]


def job_counts(conn: sa.Connection) -> dict[tuple[str, JobState], int]:
    """How many jobs each owner has in each state (served from the (owner, state) index)."""
    query = (sa.select(users.c.name, jobs.c.state, sa.func.count())
             .select_from(jobs).join(users, users.c.id == jobs.c.owner_id)
             .group_by(users.c.name, jobs.c.state))
    return {(name, state): n for name, state, n in conn.execute(query)}


def max_ids(conn: sa.Connection) -> tuple[int, int]:
    """The largest job and submission ids used so far (0 when none): an array being laid
    out has its ids taken before its rows exist."""
    job_max = max(conn.execute(sa.select(sa.func.max(jobs.c.id))).scalar() or 0,
                  conn.execute(sa.select(sa.func.max(
                      submissions.c.first_job_id + submissions.c.job_count - 1))).scalar() or 0)
    sub_max = conn.execute(sa.select(sa.func.max(submissions.c.id))).scalar() or 0
    return int(job_max), int(sub_max)


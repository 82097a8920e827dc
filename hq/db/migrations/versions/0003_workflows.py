"""Workflows: jobs.pending_reason becomes state_reason (it says why a job waits, or why it
ended as it did), job arrays get a cap and an end notification, jobs may run again after a
failure (retries, retry_count, one job_attempts row per run) and point back at the job they
run again (resubmit_of); report_jobs shows arrays, reasons and attempts. Jobs name the host
features they need (constraint_expr) and GPUs (gpus, gpu_ids; hosts.gpus), exec_servers
rows get a state; user_usage keeps fair share's history.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 05:00:00
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

from hq.db.types import BigId, UtcDateTime, word_enum
from hq.states import JobState

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

REASON_COMMENT = "why a pending job waits, or why it ended as it did"
OLD_REASON_COMMENT = "why a pending job waits, or why a job failed to start"
TABLE_ARGS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4",
              "mysql_collate": "utf8mb4_unicode_ci"}


def _rename_reason(old: str, new: str, comment: str) -> None:
    # A plain rename on both backends: SQLite's batch mode would rebuild the table under the
    # report views, and MariaDB's CHANGE keeps the column's data and sets its comment.
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"ALTER TABLE jobs RENAME COLUMN {old} TO {new}")
    else:
        op.execute(f"ALTER TABLE jobs CHANGE {old} {new} VARCHAR(255) NULL COMMENT '{comment}'")


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS report_jobs")
    _rename_reason("pending_reason", "state_reason", REASON_COMMENT)
    op.add_column("jobs", sa.Column(
        "retries", sa.Integer(), nullable=False, server_default="0",
        comment="runs again after a failure (non-zero exit), up to this many times"))
    op.add_column("hosts", sa.Column(
        "gpus", sa.String(1024), nullable=False, server_default="",
        comment="comma-separated GPU device ids or UUIDs; empty: none"))
    op.add_column("jobs", sa.Column("gpus", sa.Integer(), nullable=False, server_default="0",
                                    comment="GPUs it needs (--gpus)"))
    op.add_column("jobs", sa.Column(
        "gpu_ids", sa.String(255), nullable=True,
        comment="the devices it was given on its host, comma-separated"))
    op.add_column("jobs", sa.Column(
        "constraint_expr", sa.String(255), nullable=True,
        comment="host features it needs (--constraint): a&b|c"))
    op.add_column("jobs", sa.Column(
        "resubmit_of", BigId, nullable=True,
        comment="the job this one runs again (hq-client resubmit); no foreign key"))
    op.add_column("jobs", sa.Column(
        "retry_count", sa.Integer(), nullable=False, server_default="0",
        comment="times it ran again after a failure (--retries)"))
    op.add_column("submissions", sa.Column(
        "first_job_id", BigId, nullable=True,
        comment="its first job's id: the array id (Slurm's ArrayJobId)"))
    op.execute("UPDATE submissions SET first_job_id = "
               "(SELECT MIN(j.id) FROM jobs j WHERE j.submission_id = submissions.id)")
    op.add_column("submissions", sa.Column(
        "array_cap", sa.Integer(), nullable=True,
        comment="most of its jobs dispatched or running at once (%CAP); NULL: no cap"))
    op.add_column("submissions", sa.Column(
        "kill_on_invalid_dep", sa.Boolean(), nullable=False, server_default="1",
        comment="cancel a job whose dependency can never be met (else it waits)"))
    op.add_column("submissions", sa.Column(
        "notify", sa.Text(), nullable=True,
        comment="command run as the owner on the head node when all its jobs ended"))
    op.add_column("submissions", sa.Column("mail_user", sa.String(255), nullable=True))
    op.add_column("submissions", sa.Column("mail_type", sa.String(64), nullable=True,
                                           comment="e.g. END,FAIL"))
    op.add_column("submissions", sa.Column(
        "notify_signature", sa.String(64), nullable=True,
        comment="the user-server's HMAC of notify, mail_user and mail_type"))
    op.add_column("submissions", sa.Column(
        "notified_at", UtcDateTime(), nullable=True,
        comment="when the owner's user-server was told that all its jobs ended"))
    op.add_column("exec_servers", sa.Column(
        "state", sa.String(32), nullable=False, server_default="running",
        comment="running, connection lost, heartbeat lost, stopped, idle timeout"))
    op.add_column("exec_servers", sa.Column("state_reason", sa.String(255), nullable=True))
    op.create_table(
        "job_attempts",
        sa.Column("job_id", BigId, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("host_name", sa.String(64), nullable=True),
        sa.Column("state", word_enum(JobState, "attempt_state"), nullable=False),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.Column("exit_code", sa.SmallInteger(), nullable=True),
        sa.Column("signal_number", sa.SmallInteger(), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("ended_at", UtcDateTime(), nullable=True),
        sa.Column("cpu_time_s", sa.Float(), nullable=True),
        sa.Column("max_rss_kb", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name=op.f("fk_job_attempts_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", "attempt", name=op.f("pk_job_attempts")),
        **TABLE_ARGS,
    )
    op.add_column("users", sa.Column("share", sa.Float(), nullable=False, server_default="1",
                                     comment="fair share weight from etc/users (share=2)"))
    op.add_column("users", sa.Column(
        "max_running", sa.Integer(), nullable=True,
        comment="most jobs at once (etc/users max_running=); NULL: the server default"))
    op.add_column("users", sa.Column(
        "max_cores", sa.Integer(), nullable=True,
        comment="most cores at once (etc/users max_cores=); NULL: no limit"))
    op.create_table(
        "user_usage",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("core_seconds", sa.Float(), nullable=False,
                  comment="core-seconds of finished jobs, decayed to updated_at"),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_user_usage_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_usage")),
        **TABLE_ARGS,
    )
    _create_view("report_jobs", _report_jobs())


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS report_jobs")
    op.drop_table("user_usage")
    for column in ("max_cores", "max_running", "share"):
        op.drop_column("users", column)
    op.drop_table("job_attempts")
    for column in ("state_reason", "state"):
        op.drop_column("exec_servers", column)
    for column in ("notified_at", "notify_signature", "mail_type", "mail_user", "notify",
                   "kill_on_invalid_dep", "array_cap", "first_job_id"):
        op.drop_column("submissions", column)
    for column in ("retry_count", "resubmit_of", "constraint_expr", "gpu_ids", "gpus",
                   "retries"):
        op.drop_column("jobs", column)
    op.drop_column("hosts", "gpus")
    _rename_reason("state_reason", "pending_reason", OLD_REASON_COMMENT)
    _create_view("report_jobs", _initial()._report_views()["report_jobs"])


def _initial() -> Any:
    """The module of revision 0001, for its view definitions."""
    path = Path(__file__).with_name("0001_initial.py")
    spec = importlib.util.spec_from_file_location("hq_migration_0001", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _create_view(name: str, select: str) -> None:
    security = "" if op.get_bind().dialect.name == "sqlite" else "SQL SECURITY DEFINER "
    op.execute(f"CREATE {security}VIEW {name} AS {select}")


def _report_jobs() -> str:
    initial = _initial()
    wait = initial._seconds_between("j.submitted_at", "j.started_at")
    run = initial._seconds_between("j.started_at", "j.ended_at")
    # an array's id is its first job's id (Slurm's ArrayJobId); a single job has none
    return f"""
        SELECT j.id AS job_id, u.name AS owner, j.state AS state,
               j.state_reason AS state_reason, h.name AS host,
               CASE WHEN j.array_index IS NULL THEN NULL ELSE s.first_job_id END
                 AS array_id,
               j.array_index AS array_index, j.group_name AS group_name, j.cores AS cores,
               j.memory_mb AS memory_mb, j.priority AS priority,
               j.submitted_at AS submitted_at, j.started_at AS started_at,
               j.ended_at AS ended_at, {wait} AS wait_s, {run} AS run_s,
               j.exit_code AS exit_code, j.signal_number AS signal_number,
               j.cpu_time_s AS cpu_time_s, j.max_rss_kb AS max_rss_kb,
               j.restart_count AS restart_count, j.retry_count AS retry_count,
               j.resubmit_of AS resubmit_of
        FROM jobs j
        JOIN users u ON u.id = j.owner_id
        JOIN submissions s ON s.id = j.submission_id
        LEFT JOIN hosts h ON h.id = j.host_id"""

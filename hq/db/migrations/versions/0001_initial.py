"""Initial schema: users, hosts, submissions and jobs, dependencies, the event log, daemon
registries, settings, and the read-only reporting views.

Revision ID: 0001
Revises:
Create Date: 2026-11-21 13:14:35.529836
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hq.db.types import JsonText, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "job",
                "host",
                "cluster",
                "user",
                "server",
                name="event_kind",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column(
            "job_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
            comment="no foreign key: the log outlives purged jobs",
        ),
        sa.Column("host_name", sa.String(length=64), nullable=True),
        sa.Column(
            "user_name",
            sa.String(length=64),
            nullable=True,
            comment="whom it concerns, or who caused it",
        ),
        sa.Column("old_state", sa.String(length=16), nullable=True),
        sa.Column("new_state", sa.String(length=16), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        mysql_engine="InnoDB",
    )
    op.create_index(op.f("ix_events_at"), "events", ["at"], unique=False)
    op.create_index(op.f("ix_events_host_name_at"), "events", ["host_name", "at"], unique=False)
    op.create_index(op.f("ix_events_job_id"), "events", ["job_id"], unique=False)

    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "name", sa.String(length=64), nullable=False, comment="short name from etc/cluster.tab"
        ),
        sa.Column("full_name", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False, comment="what ssh connects to"),
        sa.Column("ssh_port", sa.Integer(), nullable=False),
        sa.Column("cores", sa.Integer(), nullable=False, comment="slots jobs may occupy"),
        sa.Column(
            "max_jobs",
            sa.Integer(),
            nullable=True,
            comment="most jobs at once; NULL means as many as cores",
        ),
        sa.Column("memory_mb", sa.Integer(), nullable=True, comment="MiB; NULL: not declared"),
        sa.Column("os", sa.String(length=64), nullable=True),
        sa.Column(
            "features",
            sa.String(length=1024),
            nullable=False,
            comment="comma-separated feature words",
        ),
        sa.Column("info", sa.String(length=255), nullable=False),
        sa.Column(
            "active",
            sa.Boolean(),
            nullable=False,
            comment="admin switch: an inactive host gets no new jobs",
        ),
        sa.Column(
            "retired",
            sa.Boolean(),
            nullable=False,
            comment="removed from etc/cluster.tab; kept for history",
        ),
        sa.Column(
            "drained",
            sa.Boolean(),
            nullable=False,
            comment="admin drain: running jobs finish, no new ones start",
        ),
        sa.Column("drain_reason", sa.String(length=255), nullable=True),
        sa.Column("drained_by", sa.String(length=64), nullable=True),
        sa.Column("drained_at", UtcDateTime(), nullable=True),
        sa.Column(
            "state",
            sa.Enum(
                "unknown",
                "up",
                "unreachable",
                "heartbeat_lost",
                name="host_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
            comment="reachability as hq-server last saw it",
        ),
        sa.Column(
            "state_reason",
            sa.String(length=255),
            nullable=True,
            comment="why unreachable / heartbeat lost",
        ),
        sa.Column("load1", sa.Float(), nullable=True, comment="1-minute load average, last report"),
        sa.Column("free_memory_mb", sa.Integer(), nullable=True),
        sa.Column("last_heartbeat_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
        sa.UniqueConstraint("name", name=op.f("uq_hosts_name")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "server_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("stopped_at", UtcDateTime(), nullable=True, comment="NULL: running or crashed"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_server_instances")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "settings",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_settings")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False, comment="Unix account name"),
        sa.Column(
            "retired",
            sa.Boolean(),
            nullable=False,
            comment="no longer in etc/users: may not submit; kept for history",
        ),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "exec_servers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(), nullable=False),
        sa.Column("stopped_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_exec_servers_host_id_hosts")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_exec_servers_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exec_servers")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        mysql_engine="InnoDB",
    )
    op.create_index(
        op.f("ix_exec_servers_host_id_user_id"),
        "exec_servers",
        ["host_id", "user_id"],
        unique=False,
    )

    op.create_table(
        "submissions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            comment="one hq-submit call; the array id of the jobs it created",
        ),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("submitted_at", UtcDateTime(), nullable=False),
        sa.Column("submit_host", sa.String(length=255), nullable=False),
        sa.Column(
            "environment",
            JsonText(),
            nullable=False,
            comment="JSON object of the submit environment, shared by its jobs",
        ),
        sa.Column("umask", sa.Integer(), nullable=False, comment="as a number, e.g. 18 for 022"),
        sa.Column("job_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_submissions_owner_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_submissions")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "user_roles",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "admin", "user", name="role", native_enum=False, create_constraint=True, length=16
            ),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_roles_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "role", name=op.f("pk_user_roles")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "user_servers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False, comment="where it runs"),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(), nullable=False),
        sa.Column("stopped_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_servers_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_servers")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        mysql_engine="InnoDB",
    )
    op.create_index(
        op.f("ix_user_servers_user_id_stopped_at"),
        "user_servers",
        ["user_id", "stopped_at"],
        unique=False,
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "submission_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "array_index",
            sa.Integer(),
            nullable=True,
            comment="line number in the jobs file / index in the array; NULL for one job",
        ),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("shell", sa.String(length=255), nullable=False),
        sa.Column("cwd", sa.Text(), nullable=False),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=True, comment="requested MiB; NULL: none"),
        sa.Column("priority", sa.Integer(), nullable=False, comment="higher runs first"),
        sa.Column("group_name", sa.String(length=64), nullable=True),
        sa.Column("info_text", sa.String(length=255), nullable=True),
        sa.Column(
            "time_limit_s", sa.Integer(), nullable=True, comment="killed after this; NULL: none"
        ),
        sa.Column("estimated_time_s", sa.Integer(), nullable=True, comment="hQ -t, informative"),
        sa.Column("estimated_memory_mb", sa.Integer(), nullable=True, comment="hQ -m, informative"),
        sa.Column(
            "stdout_path",
            sa.Text(),
            nullable=False,
            comment="as submitted: %j = job id, %a = array index, relative to cwd",
        ),
        sa.Column(
            "stderr_path",
            sa.Text(),
            nullable=False,
            comment="as submitted: %j = job id, %a = array index, relative to cwd",
        ),
        sa.Column("log_path", sa.Text(), nullable=True, comment="hQ -l: hq's own notes on the job"),
        sa.Column(
            "excluded_hosts",
            sa.String(length=1024),
            nullable=False,
            comment="comma-separated host names the job must not run on",
        ),
        sa.Column(
            "requeue",
            sa.Boolean(),
            nullable=False,
            comment="requeue when its host is lost; false: fail instead",
        ),
        sa.Column(
            "signature",
            sa.String(length=64),
            nullable=True,
            comment="HMAC of the spec by the owner's user-server",
        ),
        sa.Column(
            "state",
            sa.Enum(
                "pending",
                "held",
                "dispatched",
                "running",
                "done",
                "failed",
                "cancelled",
                name="job_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column(
            "pending_reason",
            sa.String(length=255),
            nullable=True,
            comment="why a pending job waits, or why a job failed to start",
        ),
        sa.Column("host_id", sa.Integer(), nullable=True, comment="where it runs or ran last"),
        sa.Column("pid", sa.Integer(), nullable=True, comment="process group leader on that host"),
        sa.Column("exit_code", sa.SmallInteger(), nullable=True),
        sa.Column(
            "signal_number",
            sa.SmallInteger(),
            nullable=True,
            comment="number of the signal that ended it, if any",
        ),
        sa.Column("submitted_at", UtcDateTime(), nullable=False),
        sa.Column(
            "eligible_at",
            UtcDateTime(),
            nullable=True,
            comment="when dependencies and holds last allowed it to run",
        ),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("ended_at", UtcDateTime(), nullable=True),
        sa.Column("cpu_time_s", sa.Float(), nullable=True, comment="user + system CPU seconds"),
        sa.Column("max_rss_kb", sa.BigInteger(), nullable=True, comment="peak resident set, KiB"),
        sa.Column(
            "restart_count",
            sa.Integer(),
            nullable=False,
            comment="times requeued after losing its host",
        ),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_jobs_host_id_hosts")),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_jobs_owner_id_users")),
        sa.ForeignKeyConstraint(
            ["submission_id"], ["submissions.id"], name=op.f("fk_jobs_submission_id_submissions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        mysql_engine="InnoDB",
    )
    op.create_index(op.f("ix_jobs_owner_id_state"), "jobs", ["owner_id", "state"], unique=False)
    op.create_index(
        op.f("ix_jobs_state_priority_id"), "jobs", ["state", "priority", "id"], unique=False
    )
    op.create_index(
        op.f("ix_jobs_submission_id_array_index"),
        "jobs",
        ["submission_id", "array_index"],
        unique=False,
    )
    op.create_index(op.f("ix_jobs_submitted_at"), "jobs", ["submitted_at"], unique=False)
    op.create_index(op.f("ix_jobs_host_id_state"), "jobs", ["host_id", "state"], unique=False)

    op.create_table(
        "job_dependencies",
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "depends_on_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "kind",
            sa.Enum(
                "afterok",
                "afterany",
                "afternotok",
                name="dependency_kind",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["depends_on_id"],
            ["jobs.id"],
            name=op.f("fk_job_dependencies_depends_on_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_dependencies_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "depends_on_id", name=op.f("pk_job_dependencies")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        mysql_engine="InnoDB",
    )
    op.create_index(
        op.f("ix_job_dependencies_depends_on_id"),
        "job_dependencies",
        ["depends_on_id"],
        unique=False,
    )
    create_report_views()


def downgrade() -> None:
    drop_report_views()
    op.drop_table("job_dependencies")
    op.drop_table("jobs")
    op.drop_table("user_servers")
    op.drop_table("user_roles")
    op.drop_table("submissions")
    op.drop_table("exec_servers")
    op.drop_table("users")
    op.drop_table("settings")
    op.drop_table("server_instances")
    op.drop_table("hosts")
    op.drop_table("events")


# The reporting views. Plain SQL kept in this migration on purpose: a view is part of the
# schema at this revision and must not change when today's Python code changes. They leave out
# command lines, environments, paths and job names; MariaDB runs them with the definer's
# rights, so a reporting account needs SELECT on the views only.
def _seconds_between(start: str, end: str) -> str:
    if op.get_bind().dialect.name == "sqlite":
        return f"((julianday({end}) - julianday({start})) * 86400.0)"
    return f"(TIMESTAMPDIFF(MICROSECOND, {start}, {end}) / 1000000.0)"


def _report_views() -> dict[str, str]:
    wait = _seconds_between("j.submitted_at", "j.started_at")
    run = _seconds_between("j.started_at", "j.ended_at")
    return {
        "report_jobs": f"""
            SELECT j.id AS job_id, u.name AS owner, j.state AS state, h.name AS host,
                   j.group_name AS group_name, j.cores AS cores, j.memory_mb AS memory_mb,
                   j.priority AS priority, j.submitted_at AS submitted_at,
                   j.started_at AS started_at, j.ended_at AS ended_at,
                   {wait} AS wait_s, {run} AS run_s, j.exit_code AS exit_code,
                   j.signal_number AS signal_number, j.cpu_time_s AS cpu_time_s,
                   j.max_rss_kb AS max_rss_kb, j.restart_count AS restart_count
            FROM jobs j
            JOIN users u ON u.id = j.owner_id
            LEFT JOIN hosts h ON h.id = j.host_id""",
        "report_user_days": f"""
            SELECT DATE(j.submitted_at) AS day, u.name AS owner, COUNT(*) AS jobs,
                   SUM(CASE WHEN j.state = 'done' THEN 1 ELSE 0 END) AS done,
                   SUM(CASE WHEN j.state = 'failed' THEN 1 ELSE 0 END) AS failed,
                   SUM(CASE WHEN j.state = 'cancelled' THEN 1 ELSE 0 END) AS cancelled,
                   COALESCE(SUM(j.cpu_time_s), 0) / 3600.0 AS cpu_hours,
                   AVG({wait}) AS avg_wait_s, MAX({wait}) AS max_wait_s
            FROM jobs j
            JOIN users u ON u.id = j.owner_id
            GROUP BY DATE(j.submitted_at), u.name""",
        "report_hosts": """
            SELECT h.name AS host, h.cores AS cores, h.memory_mb AS memory_mb, h.os AS os,
                   h.active AS active, h.drained AS drained, h.drain_reason AS drain_reason,
                   h.retired AS retired, h.state AS state, h.state_reason AS state_reason,
                   h.load1 AS load1, h.last_heartbeat_at AS last_heartbeat_at,
                   (SELECT COUNT(*) FROM jobs j
                     WHERE j.host_id = h.id AND j.state IN ('dispatched', 'running'))
                     AS running_jobs,
                   (SELECT COALESCE(SUM(j.cores), 0) FROM jobs j
                     WHERE j.host_id = h.id AND j.state IN ('dispatched', 'running'))
                     AS used_cores,
                   (SELECT COALESCE(SUM(j.cpu_time_s), 0) / 3600.0 FROM jobs j
                     WHERE j.host_id = h.id) AS cpu_hours
            FROM hosts h""",
    }


def create_report_views() -> None:
    security = "" if op.get_bind().dialect.name == "sqlite" else "SQL SECURITY DEFINER "
    for name, select in _report_views().items():
        op.execute(f"CREATE {security}VIEW {name} AS {select}")


def drop_report_views() -> None:
    for name in _report_views():
        op.execute(f"DROP VIEW IF EXISTS {name}")

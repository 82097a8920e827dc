"""The schema of hq's database: every table, column and index. The only owner of the schema.

Notes for readers of the database:
- Times are UTC, stored without a zone (DATETIME(6) on MariaDB).
- On MariaDB every table is InnoDB with utf8mb4; on SQLite foreign keys are switched on.
- Enumerations are stored as readable words (``pending``, ``running``, ``done``...), checked by
  named constraints; the words are the values of the enums in ``hq.states``.
- Constraint and index names follow one naming convention so they match on both backends.
- Reports should read the ``report_*`` views (created by the migrations), not these tables:
  the views leave out command lines, environments and paths.
- Rows are never deleted by hq except by an explicit purge; hosts and users that disappear
  from the configuration are marked ``retired``.
"""

from __future__ import annotations

import sqlalchemy as sa

from hq.db.types import BigId, JsonText, UtcDateTime, word_enum
from hq.states import DependencyKind, EventKind, HostState, JobState, Role

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

MARIADB_TABLE_ARGS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_unicode_ci",
}

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True, comment="Unix account name"),
    sa.Column("retired", sa.Boolean, nullable=False, default=False,
              comment="no longer in etc/users: may not submit; kept for history"),
    sa.Column("share", sa.Float, nullable=False, default=1.0, server_default="1",
              comment="fair share weight from etc/users (share=2)"),
    sa.Column("max_running", sa.Integer, nullable=True,
              comment="most jobs at once (etc/users max_running=); NULL: the server default"),
    sa.Column("max_cores", sa.Integer, nullable=True,
              comment="most cores at once (etc/users max_cores=); NULL: no limit"),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    **MARIADB_TABLE_ARGS,
)

user_roles = sa.Table(
    "user_roles", metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("role", word_enum(Role, "role"), primary_key=True),
    **MARIADB_TABLE_ARGS,
)

hosts = sa.Table(
    "hosts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True,
              comment="short name from etc/cluster.tab"),
    sa.Column("full_name", sa.String(255), nullable=False),
    sa.Column("address", sa.String(255), nullable=False, comment="what ssh connects to"),
    sa.Column("ssh_port", sa.Integer, nullable=False, default=22),
    sa.Column("cores", sa.Integer, nullable=False, comment="slots jobs may occupy"),
    sa.Column("max_jobs", sa.Integer, nullable=True,
              comment="most jobs at once; NULL means as many as cores"),
    sa.Column("memory_mb", sa.Integer, nullable=True, comment="MiB; NULL: not declared"),
    sa.Column("os", sa.String(64), nullable=True),
    sa.Column("features", sa.String(1024), nullable=False, default="",
              comment="comma-separated feature words"),
    sa.Column("info", sa.String(255), nullable=False, default=""),
    sa.Column("gpus", sa.String(1024), nullable=False, default="", server_default="",
              comment="comma-separated GPU device ids or UUIDs; empty: none"),
    sa.Column("active", sa.Boolean, nullable=False, default=True,
              comment="admin switch: an inactive host gets no new jobs"),
    sa.Column("retired", sa.Boolean, nullable=False, default=False,
              comment="removed from etc/cluster.tab; kept for history"),
    sa.Column("drained", sa.Boolean, nullable=False, default=False,
              comment="admin drain: running jobs finish, no new ones start"),
    sa.Column("drain_reason", sa.String(255), nullable=True),
    sa.Column("drained_by", sa.String(64), nullable=True),
    sa.Column("drained_at", UtcDateTime, nullable=True),
    sa.Column("state", word_enum(HostState, "host_state"), nullable=False,
              default=HostState.UNKNOWN, comment="reachability as hq-server last saw it"),
    sa.Column("state_reason", sa.String(255), nullable=True,
              comment="why unreachable / heartbeat lost"),
    sa.Column("load1", sa.Float, nullable=True, comment="1-minute load average, last report"),
    sa.Column("free_memory_mb", sa.Integer, nullable=True),
    sa.Column("last_heartbeat_at", UtcDateTime, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    **MARIADB_TABLE_ARGS,
)

submissions = sa.Table(
    "submissions", metadata,
    sa.Column("id", BigId, primary_key=True,
              comment="one hq-submit call; the array id of the jobs it created"),
    sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("submitted_at", UtcDateTime, nullable=False),
    sa.Column("submit_host", sa.String(255), nullable=False),
    sa.Column("environment", JsonText, nullable=False,
              comment="JSON object of the submit environment, shared by its jobs"),
    sa.Column("umask", sa.Integer, nullable=False, comment="as a number, e.g. 18 for 022"),
    sa.Column("job_count", sa.Integer, nullable=False),
    sa.Column("first_job_id", BigId, nullable=True,
              comment="its first job's id: the array id (Slurm's ArrayJobId)"),
    sa.Column("array_cap", sa.Integer, nullable=True,
              comment="most of its jobs dispatched or running at once (%CAP); NULL: no cap"),
    sa.Column("array_indexes", sa.String(1024), nullable=True,
              comment="an array signed as a whole (--array): its index set, e.g. 1-500:2, "
                      "part of each element's signed spec; NULL: each job signed alone"),
    sa.Column("kill_on_invalid_dep", sa.Boolean, nullable=False, default=True,
              server_default="1",
              comment="cancel a job whose dependency can never be met (else it waits)"),
    sa.Column("notify", sa.Text, nullable=True,
              comment="command run as the owner on the head node when all its jobs ended"),
    sa.Column("mail_user", sa.String(255), nullable=True),
    sa.Column("mail_type", sa.String(64), nullable=True, comment="e.g. END,FAIL"),
    sa.Column("notify_signature", sa.String(64), nullable=True,
              comment="the user-server's HMAC of notify, mail_user and mail_type"),
    sa.Column("notified_at", UtcDateTime, nullable=True,
              comment="when the owner's user-server was told that all its jobs ended"),
    **MARIADB_TABLE_ARGS,
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("submission_id", BigId, sa.ForeignKey("submissions.id"), nullable=False),
    sa.Column("array_index", sa.Integer, nullable=True,
              comment="line number in the jobs file / index in the array; NULL for one job"),
    sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    # --- the spec, as submitted and signed by the owner's user-server
    sa.Column("name", sa.String(255), nullable=True),
    sa.Column("command", sa.Text, nullable=False),
    sa.Column("shell", sa.String(255), nullable=False),
    sa.Column("cwd", sa.Text, nullable=False),
    sa.Column("cores", sa.Integer, nullable=False, default=1),
    sa.Column("memory_mb", sa.Integer, nullable=True, comment="requested MiB; NULL: none"),
    sa.Column("priority", sa.Integer, nullable=False, default=0, comment="higher runs first"),
    sa.Column("group_name", sa.String(64), nullable=True),
    sa.Column("info_text", sa.String(255), nullable=True),
    sa.Column("time_limit_s", sa.Integer, nullable=True, comment="killed after this; NULL: none"),
    sa.Column("estimated_time_s", sa.Integer, nullable=True, comment="hQ -t, informative"),
    sa.Column("estimated_memory_mb", sa.Integer, nullable=True, comment="hQ -m, informative"),
    sa.Column("stdout_path", sa.Text, nullable=False,
              comment="as submitted: %j = job id, %a = array index, relative to cwd"),
    sa.Column("stderr_path", sa.Text, nullable=False,
              comment="as submitted: %j = job id, %a = array index, relative to cwd"),
    sa.Column("log_path", sa.Text, nullable=True, comment="hQ -l: hq's own notes on the job"),
    sa.Column("excluded_hosts", sa.String(1024), nullable=False, default="",
              comment="comma-separated host names the job must not run on"),
    sa.Column("requeue", sa.Boolean, nullable=False, default=True,
              comment="requeue when its host is lost; false: fail instead"),
    sa.Column("gpus", sa.Integer, nullable=False, default=0, server_default="0",
              comment="GPUs it needs (--gpus)"),
    sa.Column("gpu_ids", sa.String(255), nullable=True,
              comment="the devices it was given on its host, comma-separated"),
    sa.Column("constraint_expr", sa.String(255), nullable=True,
              comment="host features it needs (--constraint): a&b|c"),
    sa.Column("retries", sa.Integer, nullable=False, default=0, server_default="0",
              comment="runs again after a failure (non-zero exit), up to this many times"),
    sa.Column("signature", sa.String(64), nullable=True,
              comment="HMAC of the spec by the owner's user-server"),
    sa.Column("resubmit_of", BigId, nullable=True,
              comment="the job this one runs again (hq-client resubmit); no foreign key"),
    # --- the outcome, written by hq-server
    sa.Column("state", word_enum(JobState, "job_state"), nullable=False,
              default=JobState.PENDING),
    sa.Column("state_reason", sa.String(255), nullable=True,
              comment="why a pending job waits, or why it ended as it did"),
    sa.Column("host_id", sa.Integer, sa.ForeignKey("hosts.id"), nullable=True,
              comment="where it runs or ran last"),
    sa.Column("pid", sa.Integer, nullable=True, comment="process group leader on that host"),
    sa.Column("exit_code", sa.SmallInteger, nullable=True),
    sa.Column("signal_number", sa.SmallInteger, nullable=True,
              comment="number of the signal that ended it, if any"),
    sa.Column("submitted_at", UtcDateTime, nullable=False),
    sa.Column("eligible_at", UtcDateTime, nullable=True,
              comment="when dependencies and holds last allowed it to run"),
    sa.Column("started_at", UtcDateTime, nullable=True),
    sa.Column("ended_at", UtcDateTime, nullable=True),
    sa.Column("cpu_time_s", sa.Float, nullable=True, comment="user + system CPU seconds"),
    sa.Column("max_rss_kb", sa.BigInteger, nullable=True, comment="peak resident set, KiB"),
    sa.Column("restart_count", sa.Integer, nullable=False, default=0,
              comment="times requeued after losing its host"),
    sa.Column("attempt", sa.Integer, nullable=False, default=0, server_default="0",
              comment="times dispatched: each dispatch is a new attempt"),
    sa.Column("retry_count", sa.Integer, nullable=False, default=0, server_default="0",
              comment="times it ran again after a failure (--retries)"),
    sa.Index(None, "owner_id", "state"),
    sa.Index(None, "state", "priority", "id"),
    sa.Index(None, "submitted_at"),
    sa.Index(None, "submission_id", "array_index"),
    sa.Index(None, "host_id", "state"),
    **MARIADB_TABLE_ARGS,
)

job_dependencies = sa.Table(
    "job_dependencies", metadata,
    sa.Column("job_id", BigId, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("depends_on_id", BigId, sa.ForeignKey("jobs.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("kind", word_enum(DependencyKind, "dependency_kind"), nullable=False),
    sa.Index(None, "depends_on_id"),
    **MARIADB_TABLE_ARGS,
)

# One row per run of a job that may run again after a failure (--retries): each attempt's
# own outcome, which the jobs row (the last attempt) would overwrite.
job_attempts = sa.Table(
    "job_attempts", metadata,
    sa.Column("job_id", BigId, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("host_name", sa.String(64), nullable=True),
    sa.Column("state", word_enum(JobState, "attempt_state"), nullable=False),
    sa.Column("reason", sa.String(255), nullable=True),
    sa.Column("exit_code", sa.SmallInteger, nullable=True),
    sa.Column("signal_number", sa.SmallInteger, nullable=True),
    sa.Column("started_at", UtcDateTime, nullable=True),
    sa.Column("ended_at", UtcDateTime, nullable=True),
    sa.Column("cpu_time_s", sa.Float, nullable=True),
    sa.Column("max_rss_kb", sa.BigInteger, nullable=True),
    **MARIADB_TABLE_ARGS,
)

# Append-only: hq never updates or deletes a row here, so it is the audit trail.
events = sa.Table(
    "events", metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("kind", word_enum(EventKind, "event_kind"), nullable=False),
    sa.Column("job_id", BigId, nullable=True,
              comment="no foreign key: the log outlives purged jobs"),
    sa.Column("host_name", sa.String(64), nullable=True),
    sa.Column("user_name", sa.String(64), nullable=True,
              comment="whom it concerns, or who caused it"),
    sa.Column("old_state", sa.String(16), nullable=True),
    sa.Column("new_state", sa.String(16), nullable=True),
    sa.Column("message", sa.Text, nullable=False),
    sa.Index(None, "job_id"),
    sa.Index(None, "at"),
    sa.Index(None, "host_name", "at"),
    **MARIADB_TABLE_ARGS,
)

server_instances = sa.Table(
    "server_instances", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("stopped_at", UtcDateTime, nullable=True, comment="NULL: running or crashed"),
    **MARIADB_TABLE_ARGS,
)

user_servers = sa.Table(
    "user_servers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("hostname", sa.String(255), nullable=False, comment="where it runs"),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("last_seen_at", UtcDateTime, nullable=False),
    sa.Column("stopped_at", UtcDateTime, nullable=True),
    sa.Index(None, "user_id", "stopped_at"),
    **MARIADB_TABLE_ARGS,
)

exec_servers = sa.Table(
    "exec_servers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("host_id", sa.Integer, sa.ForeignKey("hosts.id"), nullable=False),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("last_seen_at", UtcDateTime, nullable=False),
    sa.Column("stopped_at", UtcDateTime, nullable=True),
    sa.Column("state", sa.String(32), nullable=False, default="running",
              server_default="running",
              comment="running, connection lost, heartbeat lost, stopped, idle timeout"),
    sa.Column("state_reason", sa.String(255), nullable=True),
    sa.Index(None, "host_id", "user_id"),
    **MARIADB_TABLE_ARGS,
)

# Fair share with history (hq.server.usage): each user's decayed core-seconds.
user_usage = sa.Table(
    "user_usage", metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("core_seconds", sa.Float, nullable=False,
              comment="core-seconds of finished jobs, decayed to updated_at"),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    **MARIADB_TABLE_ARGS,
)

settings = sa.Table(
    "settings", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    **MARIADB_TABLE_ARGS,
)

# Names of the reporting views the migrations create (documented in doc/database.md).
REPORT_VIEWS = ("report_jobs", "report_user_days", "report_hosts")

"""Building hq-server's memory from the database at start-up."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa

from hq.db.hosts import HostRecord, list_hosts
from hq.db.jobs import JobRow, job_counts, load_unfinished, max_ids
from hq.db.settings import CLUSTER_ACTIVE, get_setting
from hq.db.users import UserRecord, list_users
from hq.jobspec import JobSpec
from hq.server.state import Cluster, Host, Job


def spec_of(row: JobRow) -> JobSpec:
    return JobSpec(
        command=row.command, cwd=row.cwd, shell=row.shell, name=row.name, cores=row.cores,
        memory_mb=row.memory_mb, priority=row.priority, group=row.group_name,
        info_text=row.info_text, time_limit_s=row.time_limit_s,
        estimated_time_s=row.estimated_time_s, estimated_memory_mb=row.estimated_memory_mb,
        stdout=row.stdout_path, stderr=row.stderr_path, log_path=row.log_path,
        excluded_hosts=tuple(h for h in row.excluded_hosts.split(",") if h),
        requeue=row.requeue, array_index=row.array_index, signature=row.signature)


def job_from_row(row: JobRow) -> Job:
    """A job as the database has it (at start-up, or a finished one shown on request)."""
    return Job(id=row.id, submission_id=row.submission_id, owner=row.owner,
               owner_id=row.owner_id, spec=spec_of(row), submitted_at=row.submitted_at,
               state=row.state, pending_reason=row.pending_reason, host=row.host,
               pid=row.pid, exit_code=row.exit_code, signal=row.signal_number,
               eligible_at=row.eligible_at, started_at=row.started_at, ended_at=row.ended_at,
               cpu_time_s=row.cpu_time_s, max_rss_kb=row.max_rss_kb,
               restart_count=row.restart_count)


def _host(rec: HostRecord) -> Host:
    return Host(id=rec.id, name=rec.name, address=rec.address, ssh_port=rec.ssh_port,
                cores=rec.cores, max_jobs=rec.max_jobs, memory_mb=rec.memory_mb,
                active=rec.active, drained=rec.drained, drain_reason=rec.drain_reason,
                retired=rec.retired, load1=rec.load1, free_memory_mb=rec.free_memory_mb,
                last_heartbeat_at=rec.last_heartbeat_at)


def apply_host_records(cluster: Cluster, records: list[HostRecord]) -> list[str]:
    """Take configuration changes (hq-dbadmin -a) into running memory; keep live state."""
    changed = []
    for rec in records:
        host = cluster.hosts.get(rec.name)
        if host is None:
            cluster.add_host(_host(rec))
            changed.append(rec.name)
            continue
        new = (rec.address, rec.ssh_port, rec.cores, rec.max_jobs, rec.memory_mb, rec.active,
               rec.retired)
        if new != (host.address, host.ssh_port, host.cores, host.max_jobs, host.memory_mb,
                   host.active, host.retired):
            (host.address, host.ssh_port, host.cores, host.max_jobs, host.memory_mb,
             host.active, host.retired) = new
            changed.append(rec.name)
    return changed


def load_state(conn: sa.Connection, retry_unreachable_s: float = 30.0,
               ) -> tuple[Cluster, dict[str, UserRecord]]:
    """Users, hosts, every unfinished job, counts and settings, as the database has them.

    Dispatched and running jobs are left alone (never dispatched again) until their owner's
    user-server reports what its exec-servers really run (sync), or their lease runs out.
    """
    cluster = Cluster()
    cluster.retry_after_s = retry_unreachable_s
    users = {u.name: u for u in list_users(conn, include_retired=True)}
    names = {u.id: u.name for u in users.values()}
    for rec in list_hosts(conn, include_retired=True):
        cluster.add_host(_host(rec))
    subs, rows = load_unfinished(conn)
    for sub in subs:
        cluster.add_submission(sub.id, names[sub.owner_id], sub.environment, sub.umask)
    for row in rows:
        cluster.add_job(job_from_row(row))
    cluster.counts = Counter(job_counts(conn))
    cluster.next_job_id, cluster.next_submission_id = (n + 1 for n in max_ids(conn))
    cluster.active = (get_setting(conn, CLUSTER_ACTIVE) or "yes") == "yes"
    return cluster, users

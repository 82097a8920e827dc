"""Building hq-server's memory from the database at start-up."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa

from hq.db.dependencies import load_dependencies
from hq.db.hosts import HostRecord, list_hosts
from hq.db.jobs import finished_counts, job_counts, load_unfinished, max_ids
from hq.db.settings import CLUSTER_ACTIVE, DATABASE_ID, get_setting
from hq.db.users import UserRecord, list_users, load_usage
from hq.server.dependencies import verdict
from hq.server.host import Host
from hq.server.journal import Journal
from hq.server.state import Cluster


def _host(rec: HostRecord) -> Host:
    return Host(id=rec.id, name=rec.name, address=rec.address, ssh_port=rec.ssh_port,
                cores=rec.cores, max_jobs=rec.max_jobs, memory_mb=rec.memory_mb,
                active=rec.active, drained=rec.drained, drain_reason=rec.drain_reason,
                drained_by=rec.drained_by, drained_at=rec.drained_at, features=rec.features,
                gpus=rec.gpus,
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
               rec.retired, rec.features, rec.gpus)
        if new != (host.address, host.ssh_port, host.cores, host.max_jobs, host.memory_mb,
                   host.active, host.retired, host.features, host.gpus):
            (host.address, host.ssh_port, host.cores, host.max_jobs, host.memory_mb,
             host.active, host.retired, host.features, host.gpus) = new
            changed.append(rec.name)
    if changed:
        cluster.hosts_changed()
    return changed


def load_state(conn: sa.Connection) -> tuple[Cluster, dict[str, UserRecord]]:
    """Users, hosts, every unfinished job, counts and settings, as the database has them.

    Dispatched and running jobs are left alone (never dispatched again) until their owner's
    user-server reports what its exec-servers really run (sync), or their lease runs out.
    """
    cluster = Cluster()
    users = {u.name: u for u in list_users(conn, include_retired=True)}
    for rec in list_hosts(conn, include_retired=True):
        cluster.add_host(_host(rec))
    subs, found = load_unfinished(conn)
    ended = finished_counts(conn, [sub.id for sub in subs])
    for sub in subs:
        sub.finished.update(ended.get(sub.id, {}))
        cluster.add_submission(sub)
    for job_id, on, kind, state in load_dependencies(conn):
        met = verdict(kind, state)
        if met is None:
            cluster.deps.add(job_id, on, kind)
        elif met is False:
            # doomed while hq-server was down (or kept waiting by --kill-on-invalid-dep=no):
            # waits until settle_dependencies decides, after the start
            cluster.deps.add(job_id, on, kind)
            cluster.doomed_at_start.append((job_id, on, state))
    for job in found:
        cluster.add_job(job)
    cluster.counts = Counter(job_counts(conn))
    cluster.usage.load(load_usage(conn))
    cluster.next_job_id, cluster.next_submission_id = (n + 1 for n in max_ids(conn))
    cluster.active = (get_setting(conn, CLUSTER_ACTIVE) or "yes") == "yes"
    cluster.database_id = get_setting(conn, DATABASE_ID) or ""
    return cluster, users


def settle_dependencies(cluster: Cluster, journal: Journal) -> None:
    """The jobs whose dependency ended in a way that can never meet it: cancelled now (or
    given the reason, where their submission keeps them waiting)."""
    doomed, cluster.doomed_at_start = cluster.doomed_at_start, []
    journal.doomed([(cluster.jobs[job_id], on, state) for job_id, on, state in doomed
                    if job_id in cluster.jobs and cluster.jobs[job_id].reason is None])

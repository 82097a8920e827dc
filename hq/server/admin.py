"""The admin's requests (hq-admin): cluster and host switches, overviews, reload, shutdown.

The caller's admin role was checked when it connected (kernel-attested uid, etc/users).
``ADMIN_REQUESTS`` maps each request class to its handler.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

from hq import __version__
from hq.db.events import host_events as events_of_host
from hq.errors import ConfigError, NotFound
from hq.job import Job
from hq.protocol.messages import (
    Accounting,
    AccountingReply,
    AccountingRow,
    AdminCancel,
    AdminCancelReply,
    AdminCancelResult,
    AdminInfo,
    AdminInfoReply,
    AdminStatus,
    AdminStatusReply,
    DrainHosts,
    DrainHostsReply,
    ExecServerInfo,
    HostEvent,
    HostEvents,
    HostEventsReply,
    HostInfo,
    ListExecServers,
    ListExecServersReply,
    ListHosts,
    ListHostsReply,
    ListUsers,
    ListUsersReply,
    Reload,
    ReloadReply,
    SetClusterActive,
    SetClusterActiveReply,
    SetHostActive,
    SetHostActiveReply,
    Shutdown,
    ShutdownReply,
    UserInfo,
    UserServerInfo,
    Watch,
)
from hq.server.core import Server, Session
from hq.server.scheduler import UserLimits
from hq.server.watch import watch

log = logging.getLogger(__name__)


def _job_counts(server: Server) -> dict[str, int]:
    total: Counter[str] = Counter()
    for (_owner, state), n in server.cluster.counts.items():
        total[str(state)] += n
    return {state: n for state, n in total.items() if n}


def info(server: Server, session: Session, request: AdminInfo) -> AdminInfoReply:
    return AdminInfoReply(
        version=__version__, pid=os.getpid(), started_at=server.started_at.timestamp(),
        database=server.database, socket=str(server.config.socket_path),
        cluster_active=server.cluster.active, jobs=_job_counts(server),
        user_servers=[UserServerInfo(link.user, link.pid, link.since.timestamp())
                      for link in server.links.all()])


def status(server: Server, session: Session, request: AdminStatus) -> AdminStatusReply:
    per_user: dict[str, dict[str, int]] = {}
    for (owner, state), n in server.cluster.counts.items():
        if n:
            per_user.setdefault(owner, {})[str(state)] = n
    return AdminStatusReply(cluster_active=server.cluster.active, jobs=_job_counts(server),
                            per_user=per_user)


def lscluster(server: Server, session: Session, request: ListHosts) -> ListHostsReply:
    idle_s = _idle_timeouts(server)
    hosts = []
    for host in sorted(server.cluster.hosts.values(), key=lambda h: h.name):
        if host.retired:
            continue
        reason = host.display_reason()
        hosts.append(HostInfo(
            name=host.name, state=str(host.state), reason=reason, active=host.active,
            drained=host.drained, cores=host.cores, free_cores=host.cores - host.used_cores,
            max_jobs=host.max_jobs, running_jobs=len(host.jobs), memory_mb=host.memory_mb,
            load1=host.load1, last_heartbeat=None if host.last_heartbeat_at is None
            else host.last_heartbeat_at.timestamp(), display=host.display(),
            drain_reason=host.drain_reason, drained_by=host.drained_by,
            drained_at=None if host.drained_at is None else host.drained_at.timestamp(),
            gpus=len(host.gpus),
            detected_cores=host.detected[0] if host.detected else None,
            detected_memory_mb=host.detected[1] if host.detected else None,
            detected_gpus=host.detected[2] if host.detected else None,
            idle_timeout_s=idle_s.get(host.name, server.config.exec_server_idle_s)))
    return ListHostsReply(hosts=hosts)


def _idle_timeouts(server: Server) -> dict[str, float]:
    """host -> idle_timeout of etc/cluster.tab, read now, as the user-servers read it when
    they start an exec-server (the database has no column for it)."""
    from hq.config import load_cluster

    try:
        return {h.name: h.idle_timeout_s for h in load_cluster(server.inst.cluster_tab)
                if h.idle_timeout_s is not None}
    except ConfigError as err:
        log.warning("server: idle timeouts from [server]: %s", err)
        return {}


def lsusers(server: Server, session: Session, request: ListUsers) -> ListUsersReply:
    users = []
    for user in sorted(server.users.values(), key=lambda u: u.name):
        if user.retired:
            continue
        counts = server.cluster.counts_of(user.name)
        limits = server.cluster.user_limits.get(user.name) or UserLimits()
        users.append(UserInfo(name=user.name, roles=sorted(str(r) for r in user.roles),
                              max_running=limits.max_running, max_cores=limits.max_cores,
                              groups=[g for g in limits.groups
                                      if g in server.cluster.group_limits],
                              pending=counts.get("pending", 0) + counts.get("held", 0),
                              running=counts.get("running", 0) + counts.get("dispatched", 0),
                              user_server=user.name in server.links,
                              usage_core_hours=round(server.cluster.usage.of(
                                  user.name, server.clock.now().timestamp()) / 3600, 3)))
    return ListUsersReply(users=users)


def set_host_active(server: Server, session: Session,
                    request: SetHostActive) -> SetHostActiveReply:
    host = server.cluster.hosts.get(request.host)
    if host is None or host.retired:
        raise NotFound(f"no such host: {request.host} (see hq-admin lscluster)")
    changed = host.active is not request.active
    if changed:
        server.journal.host_active(host, request.active, by=session.user.name)
        if not request.active:   # what waits there for a core must not start any more
            server.dispatcher.withdraw_from_host(host.name)
        server.dispatcher.wake()
    return SetHostActiveReply(host=host.name, active=request.active, changed=changed)


async def set_cluster_active(server: Server, session: Session,
                             request: SetClusterActive) -> SetClusterActiveReply:
    changed = server.cluster.active is not request.active
    if changed:
        await server.journal.cluster_active(request.active, by=session.user.name)
        if not request.active:
            for name in server.cluster.hosts:
                server.dispatcher.withdraw_from_host(name)
        server.dispatcher.wake()
    return SetClusterActiveReply(cluster_active=request.active, changed=changed)


def drain_hosts(server: Server, session: Session, request: DrainHosts) -> DrainHostsReply:
    """Drain hosts with a reason (no new jobs; running ones finish), or resume them."""
    cluster = server.cluster
    unknown = [name for name in request.hosts
               if name not in cluster.hosts or cluster.hosts[name].retired]
    if unknown:
        raise NotFound(f"no such host: {', '.join(unknown)} (see hq-admin lscluster)")
    changed = []
    for name in dict.fromkeys(request.hosts):
        host = cluster.hosts[name]
        if host.drained is request.drain and (not request.drain
                                              or host.drain_reason == request.reason):
            continue
        server.journal.host_drain(host, request.drain, session.user.name, request.reason)
        changed.append(name)
        if request.drain:   # what waits there for a core must not start any more
            server.dispatcher.withdraw_from_host(name)
    server.dispatcher.wake()
    return DrainHostsReply(hosts=list(dict.fromkeys(request.hosts)), changed=changed)


async def host_events(server: Server, session: Session, request: HostEvents
                      ) -> HostEventsReply:
    if request.host not in server.cluster.hosts:
        raise NotFound(f"no such host: {request.host} (see hq-admin lscluster)")
    found = await server.store.read(
        lambda conn: events_of_host(conn, request.host, request.limit),
        what=f"the events of host {request.host}")
    return HostEventsReply(host=request.host, events=[
        HostEvent(at=e.at.timestamp(), user=e.user_name, message=e.message) for e in found])


async def admin_cancel(server: Server, session: Session, request: AdminCancel
                       ) -> AdminCancelReply:
    """Cancel any user's jobs; the owner sees who and why. Finished ones are only named."""
    await server.layouts.settled(None)   # every job named is stored
    by = f"admin {session.user.name}: {request.reason}"
    found: dict[int, Job] = {}
    for job_id in dict.fromkeys(request.ids):
        job = server.cluster.jobs.get(job_id)
        if job is not None:
            found[job_id] = job
    owners: dict[str, list[Job]] = {}
    for job in found.values():
        owners.setdefault(job.owner, []).append(job)
    results: dict[int, str] = {}
    for jobs in owners.values():
        for job in jobs:
            if not job.state.finished:
                job.cancel_reason = f"cancelled by {by}"
        results.update(server.dispatcher.cancel(jobs, by=by))
    log.info("server: %s cancels job(s) %s", session.user.name,
             ",".join(map(str, sorted(found))) or "none")
    return AdminCancelReply(results=[
        AdminCancelResult(i, found[i].owner if i in found else None,
                          results.get(i, "not found (or finished long ago)"))
        for i in dict.fromkeys(request.ids)])


def execservers(server: Server, session: Session, request: ListExecServers
                ) -> ListExecServersReply:
    """Every exec-server hq-server heard of since it started: one that says running but has
    been silent past the heartbeat timeout shows as ``heartbeat lost``."""
    cluster, clock = server.cluster, server.clock
    now_m, now = clock.monotonic(), clock.now()
    found = []
    for (user, host), view in sorted(cluster.exec_servers.items()):
        heard = cluster.last_heard.get((user, host))
        state = view.state
        if state == "running" and heard is not None \
                and now_m - heard > server.config.heartbeat_timeout_s:
            state = "heartbeat lost"
        last_seen = None if heard is None else (now.timestamp() - (now_m - heard))
        found.append(ExecServerInfo(user=user, host=host, pid=view.pid, state=state,
                                    since=view.since.timestamp(), last_seen=last_seen,
                                    reason=view.reason))
    return ListExecServersReply(exec_servers=found)


async def accounting(server: Server, session: Session, request: Accounting
                     ) -> AccountingReply:
    import datetime as dt

    from hq.db.accounting import accounting as account

    since = dt.datetime.fromtimestamp(request.since, dt.UTC)
    until = dt.datetime.fromtimestamp(request.until, dt.UTC)
    rows = await server.store.read(lambda conn: account(conn, since, until, request.by),
                                   what="accounting")
    return AccountingReply(since=request.since, until=request.until, by=request.by,
                           rows=[AccountingRow(**row) for row in rows])


async def reload_configuration(server: Server) -> ReloadReply:
    """Re-read users and hosts from the database (after hq-dbadmin -a); SIGHUP does this too."""
    from hq.db.hosts import list_hosts
    from hq.db.users import list_users
    from hq.server.loading import apply_host_records

    users, hosts = await server.store.read(
        lambda conn: (list_users(conn, include_retired=True),
                      list_hosts(conn, include_retired=True)), what="reload")
    server.users_changed({u.name: u for u in users})
    changed = apply_host_records(server.cluster, hosts)
    for name in changed:
        host = server.cluster.hosts.get(name)
        if host is not None and (not host.active or host.drained or host.retired):
            server.dispatcher.withdraw_from_host(name)   # drained, deactivated or retired
    if server.monitor is not None:
        from hq.server.core import monitor_hosts

        server.monitor.send(monitor_hosts(server))
    count = sum(1 for u in users if not u.retired)
    log.info("server: configuration reloaded: %d users, hosts changed: %s", count,
             ", ".join(changed) or "none")
    server.dispatcher.wake()
    return ReloadReply(users=count, hosts_changed=changed)


async def reload(server: Server, session: Session, request: Reload) -> ReloadReply:
    return await reload_configuration(server)


def shutdown(server: Server, session: Session, request: Shutdown) -> ShutdownReply:
    log.info("server: shutdown requested by %s", session.user.name)
    server.stopping.set()
    return ShutdownReply(stopping=True)


ADMIN_REQUESTS: dict[type, Any] = {
    AdminInfo: info, AdminStatus: status, ListHosts: lscluster, ListUsers: lsusers,
    SetHostActive: set_host_active, SetClusterActive: set_cluster_active, Reload: reload,
    Shutdown: shutdown, DrainHosts: drain_hosts, HostEvents: host_events,
    AdminCancel: admin_cancel, ListExecServers: execservers, Accounting: accounting,
    Watch: watch,
}

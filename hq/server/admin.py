"""The admin's requests (hq-admin): cluster and host switches, overviews, shutdown.

The caller's admin role was checked when it connected (kernel-attested uid, etc/users).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from hq import __version__
from hq.db.events import Event, record_events
from hq.db.settings import CLUSTER_ACTIVE, set_setting
from hq.errors import NotFound, UsageError
from hq.states import EventKind

if TYPE_CHECKING:
    from hq.server.core import ServerContext, Session

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _job_counts(ctx: ServerContext) -> dict[str, int]:
    total: Counter[str] = Counter()
    for (_owner, state), n in ctx.cluster.counts.items():
        total[str(state)] += n
    return {state: n for state, n in total.items() if n}


def info(ctx: ServerContext, session: Session, args: list[str]) -> dict[str, Any]:
    import os

    return {"version": __version__, "pid": os.getpid(),
            "started_at": ctx.started_at.timestamp(), "database": ctx.db.describe(),
            "socket": str(ctx.config.socket_path), "cluster_active": ctx.cluster.active,
            "jobs": _job_counts(ctx),
            "user_servers": [{"user": link.user, "pid": link.pid,
                              "since": link.since.timestamp()}
                             for link in sorted(ctx.links.values(), key=lambda x: x.user)]}


def status(ctx: ServerContext, session: Session, args: list[str]) -> dict[str, Any]:
    per_user: dict[str, dict[str, int]] = {}
    for (owner, state), n in ctx.cluster.counts.items():
        if n:
            per_user.setdefault(owner, {})[str(state)] = n
    return {"cluster_active": ctx.cluster.active, "jobs": _job_counts(ctx),
            "per_user": per_user}


def lscluster(ctx: ServerContext, session: Session, args: list[str]) -> dict[str, Any]:
    hosts = []
    for host in sorted(ctx.cluster.hosts.values(), key=lambda h: h.name):
        if host.retired:
            continue
        reason = host.state_reason
        if host.drained:
            reason = f"drained: {host.drain_reason or 'no reason given'}"
        hosts.append({
            "name": host.name, "state": str(host.state), "reason": reason,
            "active": host.active, "drained": host.drained, "cores": host.cores,
            "free_cores": host.cores - host.used_cores, "max_jobs": host.max_jobs,
            "running_jobs": len(host.jobs), "memory_mb": host.memory_mb, "load1": host.load1,
            "last_heartbeat": None if host.last_heartbeat_at is None
            else host.last_heartbeat_at.timestamp()})
    return {"hosts": hosts}


def lsusers(ctx: ServerContext, session: Session, args: list[str]) -> dict[str, Any]:
    users = []
    for user in sorted(ctx.users.values(), key=lambda u: u.name):
        if user.retired:
            continue
        counts = ctx.cluster.counts_of(user.name)
        users.append({"name": user.name, "roles": sorted(str(r) for r in user.roles),
                      "pending": counts.get("pending", 0) + counts.get("held", 0),
                      "running": counts.get("running", 0) + counts.get("dispatched", 0),
                      "user_server": user.name in ctx.links})
    return {"users": users}


def _one_host(args: list[str], command: str) -> str:
    if len(args) != 1 or not args[0]:
        raise UsageError(f"{command} needs one host name, e.g. {command}:node07")
    return args[0]


async def _set_host_active(ctx: ServerContext, session: Session, args: list[str],
                           active: bool) -> dict[str, Any]:
    command = "activatehost" if active else "deactivatehost"
    name = _one_host(args, command)
    host = ctx.cluster.hosts.get(name)
    if host is None or host.retired:
        raise NotFound(f"no such host: {name} (see hq-admin lscluster)")
    changed = host.active is not active
    if changed:
        host.active = active
        word = "activated" if active else "deactivated"
        log.info("host %s: %s by %s", name, word, session.user.name)
        ctx.record_host(name, {"active": active}, f"host {name}: {word} by {session.user.name}")
        ctx.dispatcher.wake()
    return {"host": name, "active": active, "changed": changed}


async def activatehost(ctx: ServerContext, session: Session, args: list[str]) -> dict:
    return await _set_host_active(ctx, session, args, True)


async def deactivatehost(ctx: ServerContext, session: Session, args: list[str]) -> dict:
    return await _set_host_active(ctx, session, args, False)


async def _set_cluster_active(ctx: ServerContext, session: Session, active: bool) -> dict:
    changed = ctx.cluster.active is not active
    if changed:
        now = _now()
        word = "activated" if active else "deactivated"
        event = Event(at=now, kind=EventKind.CLUSTER, user_name=session.user.name,
                      message=f"cluster: {word} by {session.user.name}")

        def work(conn: Any) -> None:
            set_setting(conn, CLUSTER_ACTIVE, "yes" if active else "no", now)
            record_events(conn, [event])

        # Recorded before it takes effect: the switch must survive a restart.
        await ctx.store.write(work, what="cluster activation", refuse_when_down=True)
        ctx.cluster.active = active
        log.info("cluster: %s by %s", word, session.user.name)
        ctx.dispatcher.wake()
    return {"cluster_active": active, "changed": changed}


async def activate(ctx: ServerContext, session: Session, args: list[str]) -> dict:
    return await _set_cluster_active(ctx, session, True)


async def deactivate(ctx: ServerContext, session: Session, args: list[str]) -> dict:
    return await _set_cluster_active(ctx, session, False)


async def reload_configuration(ctx: ServerContext) -> dict[str, Any]:
    """Re-read users and hosts from the database (after hq-dbadmin -a); SIGHUP does this too."""
    from hq.db.hosts import list_hosts
    from hq.db.users import list_users
    from hq.server.loading import apply_host_records

    users, hosts = await ctx.store.read(
        lambda conn: (list_users(conn, include_retired=True),
                      list_hosts(conn, include_retired=True)), what="reload")
    ctx.users = {u.name: u for u in users}
    changed = apply_host_records(ctx.cluster, hosts)
    log.info("server: configuration reloaded: %d users, hosts changed: %s",
             sum(1 for u in users if not u.retired), ", ".join(changed) or "none")
    ctx.dispatcher.wake()
    return {"users": sum(1 for u in users if not u.retired), "hosts_changed": changed}


async def reload(ctx: ServerContext, session: Session, args: list[str]) -> dict[str, Any]:
    return await reload_configuration(ctx)


def shutdown(ctx: ServerContext, session: Session, args: list[str]) -> dict[str, Any]:
    log.info("server: shutdown requested by %s", session.user.name)
    ctx.stopping.set()
    return {"stopping": True}


ADMIN_COMMANDS = {
    "info": info, "status": status, "lscluster": lscluster, "lsusers": lsusers,
    "activatehost": activatehost, "deactivatehost": deactivatehost,
    "activate": activate, "activatecluster": activate,
    "deactivate": deactivate, "deactivatecluster": deactivate, "reload": reload,
    "shutdown": shutdown,
}


async def admin_request(ctx: ServerContext, session: Session, message: dict[str, Any]) -> dict:
    command = message.get("command")
    args = message.get("args") or []
    handler = ADMIN_COMMANDS.get(command) if isinstance(command, str) else None
    if handler is None:
        raise UsageError(f"unknown admin command {command!r} (hq-admin help lists them)")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise UsageError("admin arguments must be a list of strings")
    result = handler(ctx, session, args)
    if hasattr(result, "__await__"):
        result = await result
    return {"result": result}

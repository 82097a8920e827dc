"""The admin's requests (hq-admin -> hq-server, role admin) and their replies."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from hq.protocol.fields import (
    Count,
    Counts,
    Epoch,
    HostName,
    IdList,
    Pid,
    Reply,
    Request,
    Seconds,
    Text,
    UserName,
    Word,
)

# --- the admin's requests (hq-admin -> hq-server, role admin) -----------------------------------

class UserServerInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user: UserName
    pid: Pid
    since: Epoch


class AdminInfoReply(Reply, tag="reply", kw_only=True):
    version: Word
    pid: Pid
    started_at: Epoch
    database: Text
    socket: Text
    cluster_active: bool
    jobs: Counts
    user_servers: list[UserServerInfo]


class AdminInfo(Request, tag="admin_info", kw_only=True):
    reply_type = AdminInfoReply


class AdminStatusReply(Reply, tag="reply", kw_only=True):
    cluster_active: bool
    jobs: Counts
    per_user: dict[UserName, Counts]


class AdminStatus(Request, tag="admin_status", kw_only=True):
    reply_type = AdminStatusReply


class AdminCancelResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Annotated[int, msgspec.Meta(ge=1)]
    owner: UserName | None
    result: Text


class AdminCancelReply(Reply, tag="reply", kw_only=True):
    results: list[AdminCancelResult]


class HostInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: HostName
    state: Word
    reason: Text | None
    active: bool
    drained: bool
    cores: Count
    free_cores: int
    max_jobs: Count | None
    running_jobs: Count
    memory_mb: Count | None
    load1: float | None
    last_heartbeat: Epoch | None
    # version 2: the admin's drain switch as seen (draining while jobs still run there)
    display: Word = ""                # up, draining, drained, inactive, unreachable, ...
    drain_reason: Text | None = None
    drained_by: UserName | None = None
    drained_at: Epoch | None = None
    gpus: Count = 0
    # what the host monitor found there (hq.hardware), to compare with etc/cluster.tab
    detected_cores: Count | None = None
    detected_memory_mb: Count | None = None
    detected_gpus: Count | None = None
    # its exec-servers' idle timeout: etc/cluster.tab idle_timeout, else the server's default
    idle_timeout_s: Seconds | None = None


class ListHostsReply(Reply, tag="reply", kw_only=True):
    hosts: list[HostInfo]


class ListHosts(Request, tag="lscluster", kw_only=True):
    reply_type = ListHostsReply


class UserInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: UserName
    roles: list[Word]
    pending: Count
    running: Count
    user_server: bool
    usage_core_hours: float = 0.0     # fair share's decayed past usage
    # the user's own limits (etc/users, [limits]; None: the default's), and the Unix groups
    # whose limits ([limits] group.NAME, @NAME lines) bind the user's jobs too
    max_running: Count | None = None
    max_cores: Count | None = None
    groups: list[Word] = msgspec.field(default_factory=list)


class ListUsersReply(Reply, tag="reply", kw_only=True):
    users: list[UserInfo]


class ListUsers(Request, tag="lsusers", kw_only=True):
    reply_type = ListUsersReply


class SetHostActiveReply(Reply, tag="reply", kw_only=True):
    host: HostName
    active: bool
    changed: bool


class SetHostActive(Request, tag="set_host_active", kw_only=True):
    """activatehost / deactivatehost."""

    host: HostName
    active: bool
    reply_type = SetHostActiveReply


class SetClusterActiveReply(Reply, tag="reply", kw_only=True):
    cluster_active: bool
    changed: bool


class SetClusterActive(Request, tag="set_cluster_active", kw_only=True):
    """activate / deactivate."""

    active: bool
    reply_type = SetClusterActiveReply


class ReloadReply(Reply, tag="reply", kw_only=True):
    users: Count
    hosts_changed: list[HostName]


class Reload(Request, tag="reload", kw_only=True):
    """Read users and hosts again from the database (after ``hq-dbadmin -a``)."""

    reply_type = ReloadReply


class ShutdownReply(Reply, tag="reply", kw_only=True):
    stopping: bool


class Shutdown(Request, tag="shutdown", kw_only=True):
    reply_type = ShutdownReply


class DrainHostsReply(Reply, tag="reply", kw_only=True):
    hosts: list[HostName]
    changed: list[HostName]      # the ones whose switch this request turned


class DrainHosts(Request, tag="drain_hosts", kw_only=True):
    """Drain hosts (no new jobs; running ones finish) with a reason, or resume them."""

    hosts: Annotated[list[HostName], msgspec.Meta(min_length=1, max_length=1000)]
    drain: bool
    reason: Annotated[str, msgspec.Meta(max_length=255)] | None = None
    reply_type = DrainHostsReply


class HostEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    at: Epoch
    user: UserName | None
    message: Text


class HostEventsReply(Reply, tag="reply", kw_only=True):
    host: HostName
    events: list[HostEvent]          # newest last


class HostEvents(Request, tag="host_events", kw_only=True):
    """A host's events from the event log (drained, resumed, lost, found, activated)."""

    host: HostName
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 50
    reply_type = HostEventsReply


class AdminCancel(Request, tag="admin_cancel", kw_only=True):
    """Cancel any user's jobs, with a reason the owner sees; the owner's user-server stops
    the running ones."""

    ids: IdList
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    reply_type = AdminCancelReply


class ExecServerInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    user: UserName
    host: HostName
    pid: Pid | None
    state: Word          # running, connection lost, heartbeat lost, stopped, idle timeout
    since: Epoch
    last_seen: Epoch | None
    reason: Text | None = None


class ListExecServersReply(Reply, tag="reply", kw_only=True):
    exec_servers: list[ExecServerInfo]


class ListExecServers(Request, tag="execservers", kw_only=True):
    """Every user's exec-server on every host, as hq-server knows them since it started."""

    reply_type = ListExecServersReply


class AccountingRow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    key: Text                       # the user, the day (YYYY-MM-DD) or the host
    jobs: Count
    done: Count
    failed: Count
    cancelled: Count
    core_hours: float
    cpu_hours: float
    avg_wait_s: float | None


class AccountingReply(Reply, tag="reply", kw_only=True):
    since: Epoch
    until: Epoch
    by: Word
    rows: list[AccountingRow]


class Accounting(Request, tag="accounting", kw_only=True):
    """Jobs that ended in [since, until): counts, core-hours, CPU hours, waiting, per user,
    day or host (from the report views)."""

    since: Epoch
    until: Epoch
    by: Literal["user", "day", "host"] = "user"
    reply_type = AccountingReply


ADMIN_REQUESTS = (AdminInfo, AdminStatus, ListHosts, ListUsers, SetHostActive,
                  SetClusterActive, Reload, Shutdown, DrainHosts, HostEvents, AdminCancel,
                  ListExecServers, Accounting)

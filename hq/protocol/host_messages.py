"""What is reported about hosts and the exec-servers on them: reachability as a user-server
sees it, exec-server states, heartbeats, and the host monitor's facts (hq-server's own
account). Every kind is importable from ``hq.protocol.messages``, the catalogue."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from hq.protocol.fields import Count, HostName, Message, Pid, Seconds, Text
from hq.protocol.handshake import HostAddress


class HostStateReport(Message, tag="host_state", kw_only=True):
    """A user-server could (``up``) or could not (``unreachable``) reach a host;
    ``user_only``: only this user cannot (host key, login)."""

    host: HostName
    state: Literal["up", "unreachable"]
    reason: Text | None = None
    user_only: bool = False




class ExecServerReport(Message, tag="exec_server", kw_only=True):
    """A user-server's exec-server on ``host`` came up (with its pid), was lost, or was let
    go (``stopped``, ``idle timeout``: the user-server had nothing more for it) (version 2)."""

    host: HostName
    pid: Pid | None = None
    state: Literal["running", "connection lost", "stopped", "idle timeout"]
    reason: Text | None = None


class Heartbeat(Message, tag="heartbeat", kw_only=True):
    """An exec-server is alive (every heartbeat interval), with what it sees of its host."""

    load1: Annotated[float, msgspec.Meta(ge=0, le=1e6)] | None = None
    free_memory_mb: Count | None = None
    running: Count = 0
    host: HostName | None = None


class HostFacts(Message, tag="host_facts", kw_only=True):
    """What a host is doing, measured by the host monitor (hq-server's own account): the only
    source of facts about a host that affect everyone. ``cpu_busy``, ``hq_daemons`` and
    ``hq_jobs`` are cores (1.0 = one core busy) over the last report interval."""

    cores: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    cpu_busy: Annotated[float, msgspec.Meta(ge=0, le=1e6)]
    hq_daemons: Annotated[float, msgspec.Meta(ge=0, le=1e6)]
    # the process trees of the exec-servers (hq's jobs); None from an older monitor
    hq_jobs: Annotated[float, msgspec.Meta(ge=0, le=1e6)] | None = None
    load1: Annotated[float, msgspec.Meta(ge=0, le=1e6)]
    memory_mb: Count
    free_memory_mb: Count
    host: HostName | None = None     # set by the monitor hub, for hq-server
    gpus: Count | None = None        # GPUs found (hq.hardware); None from an older monitor


class HostReach(Message, tag="host_reach", kw_only=True):
    """The host monitor could (``up``) or could not (``unreachable``) reach a host."""

    host: HostName
    state: Literal["up", "unreachable"]
    reason: Text | None = None


class MonitorHosts(Message, tag="monitor_hosts", kw_only=True):
    """hq-server -> monitor: the hosts to watch (again after every reload)."""

    hosts: Annotated[list[HostAddress], msgspec.Meta(max_length=100_000)]
    interval_s: Seconds

"""The first frames of every connection: who is calling, in which role, and the answer."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from hq.protocol.fields import HostName, Message, Pid, Seconds, UserName, Word

# --- handshake -------------------------------------------------------------------------------

Role = Literal["cli", "admin", "userd", "monitor"]


class ExecSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                   omit_defaults=True):
    """What a user-server's hello tells its exec-server (the newest controller's values)."""

    idle_timeout_s: Seconds | None = None
    lease_s: Seconds | None = None
    heartbeat_interval_s: Seconds | None = None
    database: Word | None = None     # whose jobs this link speaks for (version 2)
    memory_enforce: Literal["kill", "warn", "off"] | None = None   # jobs over --memory
    pin_cpus: bool | None = None     # bind each job to CPUs of its own


class Hello(Message, tag="hello", kw_only=True):
    """The first frame of every connection, from the side that connected."""

    version: Annotated[int, msgspec.Meta(ge=0, le=1000)]
    role: Role
    program: Word = ""
    settings: ExecSettings | None = None   # to an exec-server only


class HostAddress(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a user-server reaches a host's exec-server."""

    name: HostName
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    ssh_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 22


class Welcome(Message, tag="welcome", kw_only=True):
    """The answer to a hello (built by ``hq.protocol.channel.welcome`` only)."""

    version: Annotated[int, msgspec.Meta(ge=0, le=1000)]
    user: UserName | None = None
    server: Word | None = None          # hq-server: its program and version
    pid: Pid | None = None              # user-server, exec-server
    host: HostName | None = None        # exec-server: its hostname
    adopt: list[HostAddress] | None = None   # hq-server to a user-server: hosts to reconnect
    database: Word | None = None        # hq-server: its database's identity (version 2)

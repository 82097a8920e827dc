"""hq-server's shared context and its socket: who is calling, and routing what they send.

Identity comes only from the kernel (SO_PEERCRED on the Unix socket): the uid is mapped to an
account name, which must be in etc/users; the admin role is needed for ``role: admin``. A user
name inside a message is never read. Each user has at most one connected user-server (the
newest wins); hq-server sends that user's work to it and to nobody else.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hq import __version__
from hq.auth import user_name
from hq.config import DatabaseConfig, Installation, ServerConfig
from hq.db.daemons import record_user_server_gone, record_user_server_seen
from hq.db.events import Event, record_events
from hq.db.hosts import update_host
from hq.db.users import UserRecord
from hq.errors import HqError, PermissionDenied, UsageError
from hq.protocol import (
    MAX_FRAME,
    Channel,
    Message,
    ProtocolError,
    check_hello,
    error_message,
    peer_credentials,
)
from hq.server.dispatch import Dispatcher
from hq.server.scheduler import Policy
from hq.server.state import Cluster
from hq.server.store import Store
from hq.states import EventKind

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0


@dataclass(eq=False)
class UserLink:
    """The connection of one user's user-server."""

    user: str
    pid: int
    channel: Channel
    since: dt.datetime

    def send(self, message: Message) -> None:
        self.channel.send(message)


@dataclass(eq=False)
class ServerContext:
    inst: Installation
    config: ServerConfig
    db: DatabaseConfig
    cluster: Cluster
    store: Store
    users: dict[str, UserRecord]
    policy: Policy
    started_at: dt.datetime
    links: dict[str, UserLink] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    dispatcher: Dispatcher = field(init=False)

    def __post_init__(self) -> None:
        self.dispatcher = Dispatcher(self)

    def record_host(self, name: str, values: dict[str, Any], message: str) -> None:
        now = dt.datetime.now(dt.UTC)
        event = Event(at=now, kind=EventKind.HOST, host_name=name, message=message)

        def work(conn: Any) -> None:
            update_host(conn, name, {**values, "updated_at": now})
            record_events(conn, [event])

        self.store.write(work, what=f"host {name} change")


RequestHandler = Callable[[ServerContext, "Session", Message], Any]


@dataclass(eq=False)
class Session:
    """One connected client: who it is (from the kernel) and in which role."""

    user: UserRecord
    role: str
    pid: int
    channel: Channel


class Listener:
    """Accepts connections on the server socket and routes their messages."""

    def __init__(self, ctx: ServerContext, user_requests: dict[str, RequestHandler],
                 admin_request: RequestHandler) -> None:
        self.ctx = ctx
        self.user_requests = user_requests
        self.admin_request = admin_request
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        if path.exists() or path.is_symlink():
            path.unlink()  # stale: we hold the pid-file lock, so no other server uses it
        self.server = await asyncio.start_unix_server(self._accept, path=str(path),
                                                      limit=MAX_FRAME)
        # Anyone may connect: who they are is taken from the kernel, not from the socket mode.
        path.chmod(0o666)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for link in list(self.ctx.links.values()):
            link.channel.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        creds = peer_credentials(writer.get_extra_info("socket"))
        name = user_name(creds.uid)
        channel = Channel(reader, writer, f"{name} (pid {creds.pid})")
        try:
            hello = await asyncio.wait_for(channel.receive(), HELLO_TIMEOUT_S)
            if hello is None:
                return
            role = check_hello(hello, {"userd", "admin"})
            user = self._authorise(name, role)
        except (HqError, TimeoutError) as err:
            if isinstance(err, HqError):
                channel.send(error_message(err))
                log.warning("connection from %s refused: %s", channel.name, err)
            channel.close()
            return
        session = Session(user, role, creds.pid, channel)
        welcome: Message = {"type": "welcome", "version": 1, "user": name,
                            "server": f"hq-server {__version__}"}
        if role == "userd":
            hosts = sorted({j.host for j in self.ctx.cluster.active_jobs_of(name) if j.host})
            welcome["adopt"] = [self.ctx.cluster.hosts[h].wire() for h in hosts]
            self._register(session)
        channel.send(welcome)
        try:
            await channel.serve(lambda message: self._route(session, message))
        finally:
            if role == "userd":
                self._unregister(session)

    def _authorise(self, name: str, role: str) -> UserRecord:
        user = self.ctx.users.get(name)
        if user is None or user.retired:
            raise PermissionDenied(f"user {name} is not in etc/users of this hq installation: "
                                   "ask the hq admin to add you")
        if role == "admin" and not user.is_admin:
            raise PermissionDenied(f"user {name} lacks the admin role in etc/users")
        return user

    def _register(self, session: Session) -> None:
        old = self.ctx.links.get(session.user.name)
        link = UserLink(session.user.name, session.pid, session.channel,
                        dt.datetime.now(dt.UTC))
        self.ctx.links[session.user.name] = link
        self._record_user_server(session, gone=False)
        if old is not None:
            log.info("user-server of %s: pid %d replaces pid %d", link.user, link.pid, old.pid)
            old.channel.close()
        else:
            log.info("user-server of %s: connected (pid %d)", link.user, link.pid)
        self.ctx.dispatcher.wake()

    def _unregister(self, session: Session) -> None:
        link = self.ctx.links.get(session.user.name)
        if link is not None and link.channel is session.channel:
            del self.ctx.links[session.user.name]
            log.info("user-server of %s: disconnected (pid %d)", link.user, link.pid)
            self._record_user_server(session, gone=True)

    def _record_user_server(self, session: Session, *, gone: bool) -> None:
        """The user_servers table: who ran a user-server, from when to when (for reports).
        The peer pid is on this host: user-servers run on hq-server's host."""
        user_id, pid, now = session.user.id, session.pid, dt.datetime.now(dt.UTC)
        if gone:
            self.ctx.store.write(lambda conn: record_user_server_gone(conn, user_id, pid, now),
                                 what="user-server gone")
        else:
            host = socket.gethostname()
            self.ctx.store.write(
                lambda conn: record_user_server_seen(conn, user_id, host, pid, now),
                what="user-server seen")

    def _route(self, session: Session, message: Message) -> None:
        kind = message["type"]
        if "rid" not in message:
            if session.role == "userd":
                self._notification(session, message)
            return
        if session.role == "admin":
            handler = self.admin_request if kind == "admin" else None
        else:
            handler = self.user_requests.get(kind)
        if handler is None:
            session.channel.reply_error(message, UsageError(f"unknown request {kind!r}"))
            return
        task = asyncio.create_task(self._answer(handler, session, message))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, handler: RequestHandler, session: Session,
                      message: Message) -> None:
        try:
            result = handler(self.ctx, session, message)
            if asyncio.iscoroutine(result):
                result = await result
            session.channel.reply(message, **(result or {}))
        except HqError as err:
            session.channel.reply_error(message, err)
        except Exception as err:
            log.exception("request %s from %s failed", message.get("type"), session.channel.name)
            session.channel.reply_error(message, HqError(f"internal error in hq-server: {err}"))

    def _notification(self, session: Session, message: Message) -> None:
        link = self.ctx.links.get(session.user.name)
        if link is None or link.channel is not session.channel:
            return  # a replaced user-server: its reports come again through the new one
        dispatcher = self.ctx.dispatcher
        kind, host = message["type"], message.get("host")
        try:
            if not isinstance(host, str) or host not in self.ctx.cluster.hosts:
                raise ProtocolError(f"{kind}: unknown host {host!r}")
            if kind == "job_events":
                dispatcher.on_job_events(link, host, list(message.get("events", [])))
            elif kind == "sync":
                dispatcher.on_sync(link, host, message)
            elif kind == "undeliverable":
                dispatcher.on_undeliverable(link, host, message.get("ids", []),
                                            str(message.get("reason", "unreachable")))
            elif kind == "host_state":
                dispatcher.on_host_state(host, str(message.get("state")),
                                         message.get("reason"),
                                         user=link.user if message.get("user_only") else None)
            elif kind == "heartbeat":
                dispatcher.on_heartbeat(link, host, message)
            else:
                raise ProtocolError(f"unknown notification {kind!r}")
        except (HqError, ValueError) as err:
            log.warning("user-server of %s: %s", link.user, err)

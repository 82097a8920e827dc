"""hq-server's socket: who is calling, and which handler each message goes to.

Identity comes only from the kernel (SO_PEERCRED on the Unix socket): the uid is mapped to an
account name, which must be in etc/users; the admin role is needed for ``role: admin``. A user
name inside a message is never read. Each user has at most one connected user-server (the
newest wins); hq-server sends that user's work to it and to nobody else.

Routing is by message class: requests through ``USER_REQUESTS`` or ``ADMIN_REQUESTS``,
a user-server's reports through ``NOTIFICATIONS``; a connection may only send the kinds of its
role (the channel's decoder refuses the others).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hq import __version__
from hq.auth import user_name
from hq.db.users import UserRecord
from hq.errors import Busy, HqError, PermissionDenied, UsageError
from hq.protocol import MAX_FRAME, Channel, check_hello, error_message, peer_credentials, welcome
from hq.protocol.frames import printable
from hq.protocol.messages import (
    ADMIN_SENDS,
    MONITOR_SENDS,
    USERD_SENDS_SERVER,
    ExecServerReport,
    Heartbeat,
    Hello,
    HostFacts,
    HostStateReport,
    JobEvents,
    Request,
    Superseded,
    Sync,
    Undeliverable,
)
from hq.server.admin import ADMIN_REQUESTS
from hq.server.core import Server, Session, monitor_hosts
from hq.server.dispatch import Dispatcher
from hq.server.limits import (
    ADMIN_MAX_FRAME,
    HELLO_MAX_FRAME,
    HELLO_TIMEOUT_S,
    ConnectionCounter,
    TokenBucket,
)
from hq.server.links import UserLink
from hq.server.requests import USER_REQUESTS

log = logging.getLogger(__name__)

NOTIFICATIONS: dict[type, Callable[[Dispatcher, UserLink, Any], None]] = {
    JobEvents: Dispatcher.on_job_events, Sync: Dispatcher.on_sync,
    Undeliverable: Dispatcher.on_undeliverable, HostStateReport: Dispatcher.on_host_state,
    Heartbeat: Dispatcher.on_heartbeat, ExecServerReport: Dispatcher.on_exec_server,
}
"""A user-server's reports (notifications) -> the dispatcher's handler."""


class Listener:
    """Accepts connections on the server socket and routes their messages."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.socket: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.connections = ConnectionCounter(server.config.max_connections_per_user)
        self.buckets: dict[str, TokenBucket] = {}

    async def start(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        if path.exists() or path.is_symlink():
            path.unlink()  # stale: we hold the pid-file lock, so no other server uses it
        self.socket = await asyncio.start_unix_server(self._accept, path=str(path),
                                                      limit=MAX_FRAME)
        # Anyone may connect: who they are is taken from the kernel, not from the socket mode.
        path.chmod(0o666)

    async def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
        self.server.links.close_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        creds = peer_credentials(writer.get_extra_info("socket"))
        if not self.connections.admit(creds.uid, self.server.clock.monotonic()):
            writer.close()
            return
        try:
            await self._serve_connection(reader, writer, creds.uid, creds.pid)
        finally:
            self.connections.closed(creds.uid)
            if not writer.is_closing():
                writer.close()

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter, uid: int, pid: int) -> None:
        name = user_name(uid)
        # until it is identified, a peer may send only a short hello
        channel = Channel(reader, writer, f"{name} (pid {pid})", max_frame=HELLO_MAX_FRAME)
        try:
            hello = await asyncio.wait_for(channel.receive_as(Hello), HELLO_TIMEOUT_S)
            if hello is None:
                channel.close()
                return
            version = check_hello(hello, {"userd", "admin", "monitor"})
            if hello.role == "monitor":
                if uid != os.geteuid():
                    raise PermissionDenied("only hq-server's own account reports host facts")
            else:
                user = self._authorise(name, hello.role)
        except (HqError, TimeoutError) as err:
            if isinstance(err, HqError):
                channel.send(error_message(err))
                log.warning("connection from %s refused: %s", channel.name, printable(err))
            channel.close()
            return
        channel.version = version
        channel.max_frame = MAX_FRAME if hello.role == "userd" else ADMIN_MAX_FRAME
        if hello.role == "monitor":
            await self._serve_monitor(channel, version)
            return
        session = Session(user, hello.role, pid)
        link: UserLink | None = None
        if hello.role == "userd":
            channel.accept(USERD_SENDS_SERVER)
            cluster = self.server.cluster
            hosts = sorted({j.host for j in cluster.active_jobs_of(name) if j.host})
            channel.send(welcome(version, user=name, server=f"hq-server {__version__}",
                                 adopt=[cluster.hosts[h].address_info() for h in hosts],
                                 database=cluster.database_id or None))
            link = UserLink(name, user.id, pid, channel, self.server.clock.now())
            self._register(link)
        else:
            channel.accept(ADMIN_SENDS)
            channel.send(welcome(version, user=name, server=f"hq-server {__version__}"))
        try:
            await channel.serve(lambda message: self._route(session, link, channel, message))
        finally:
            if link is not None:
                self._unregister(link)

    async def _serve_monitor(self, channel: Channel, version: int) -> None:
        """The host monitor (hq-server's own account): the hosts to watch, and its facts."""
        channel.accept(MONITOR_SENDS)
        channel.send(welcome(version, server=f"hq-server {__version__}"))
        self.server.monitor = channel
        channel.send(monitor_hosts(self.server))
        log.info("monitor: connected")
        dispatcher = self.server.dispatcher

        def on_report(message: Any) -> None:
            if isinstance(message, HostFacts):
                dispatcher.on_host_facts(message)
            else:
                dispatcher.on_host_reach(message)

        try:
            await channel.serve(on_report)
        finally:
            if self.server.monitor is channel:
                self.server.monitor = None
            log.warning("monitor: disconnected")

    def _bucket(self, user: str) -> TokenBucket:
        bucket = self.buckets.get(user)
        if bucket is None:
            config = self.server.config
            bucket = self.buckets[user] = TokenBucket.full(
                config.requests_per_second, config.request_burst, self.server.clock.monotonic())
        return bucket

    def _authorise(self, name: str, role: str) -> UserRecord:
        user = self.server.users.get(name)
        if user is None or user.retired:
            raise PermissionDenied(f"user {name} is not in etc/users of this hq installation: "
                                   "ask the hq admin to add you")
        if role == "admin" and not user.is_admin:
            raise PermissionDenied(f"user {name} lacks the admin role in etc/users")
        return user

    def _register(self, link: UserLink) -> None:
        current = self.server.links.get(link.user)
        if current is not None and current.version >= 2 and current.pid != link.pid:
            # the older one exits; else the two would replace each other for ever
            current.channel.send(Superseded(by_pid=link.pid))
        old = self.server.links.register(link)
        self.server.journal.user_server(link.user_id, link.pid, gone=False)
        self.server.notifier.connected(link.user)
        if old is not None:
            log.info("user-server of %s: pid %d replaces pid %d", link.user, link.pid, old.pid)
        else:
            log.info("user-server of %s: connected (pid %d, protocol %d)", link.user, link.pid,
                     link.version)
        self.server.dispatcher.wake()

    def _unregister(self, link: UserLink) -> None:
        if self.server.links.unregister(link):
            log.info("user-server of %s: disconnected (pid %d)", link.user, link.pid)
            self.server.journal.user_server(link.user_id, link.pid, gone=True)

    def _route(self, session: Session, link: UserLink | None, channel: Channel,
               message: Any) -> None:
        if isinstance(message, Request):
            table = ADMIN_REQUESTS if session.role == "admin" else USER_REQUESTS
            handler = table.get(type(message))
            if handler is None:
                channel.reply_error(message, UsageError(
                    f"unknown request {type(message).__name__}"))
                return
            if not self._bucket(session.user.name).take(self.server.clock.monotonic()):
                config = self.server.config
                channel.reply_error(message, Busy(
                    f"too many requests from {session.user.name} (more than "
                    f"{config.requests_per_second:g} a second): try again in a moment"))
                return
            task = asyncio.create_task(self._answer(handler, session, channel, message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        if link is None or not self.server.links.is_current(link):
            return  # a replaced user-server: its reports come again through the new one
        try:
            NOTIFICATIONS[type(message)](self.server.dispatcher, link, message)
        except Exception:
            # the loop boundary: one user's report must not stop the others'
            log.exception("user-server of %s: %s failed", link.user, type(message).__name__)

    async def _answer(self, handler: Any, session: Session, channel: Channel,
                      message: Request) -> None:
        try:
            result = handler(self.server, session, message)
            if asyncio.iscoroutine(result):
                result = await result
            channel.reply(message, result)
        except HqError as err:
            channel.reply_error(message, err)
        except Exception as err:
            log.exception("request %s from %s failed", type(message).__name__, channel.name)
            channel.reply_error(message, HqError(f"internal error in hq-server: {err}"))

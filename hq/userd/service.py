"""hq-user-server: one user's relay between their commands, hq-server and their exec-servers.

It runs as the user. Commands (hq-submit, hq-client) reach it on a socket in the user's 0700
runtime directory, and only processes of the same uid are served. It signs each submitted job
with the user's key, passes requests on to hq-server (which knows the user from the kernel),
and carries work from hq-server to the user's exec-servers and their reports back. When
hq-server goes away it keeps the exec-servers and their jobs, reconnects, and reports their
whole state again (``Sync``) so that nothing finished in the meantime is lost.

What each peer may send and who handles it: ``FROM_SERVER`` and ``FROM_EXEC`` below (class ->
handler); a command's requests are all passed on to hq-server (``_forward``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import msgspec

from hq.auth import job_signature_ok, load_signing_key, sign_job, user_name
from hq.config import Installation, ServerConfig
from hq.errors import HqError, PermissionDenied, Unavailable
from hq.jobspec import submission_digest
from hq.protocol import (
    MAX_FRAME,
    Channel,
    check_hello,
    error_message,
    open_unix_channel,
    peer_credentials,
    welcome,
)
from hq.protocol.messages import (
    CLI_SENDS,
    SERVER_SENDS_USERD,
    Ack,
    CancelJobs,
    ExecSettings,
    Heartbeat,
    Hello,
    HostAddress,
    HostStateReport,
    JobEnded,
    JobEvents,
    Ping,
    Relay,
    Request,
    Run,
    Submit,
    Superseded,
    Sync,
    SyncReply,
    Undeliverable,
)
from hq.userd.execlink import ExecLink, is_user_problem

log = logging.getLogger(__name__)

SERVER_WAIT_S = 10.0      # how long a command waits for a restarting hq-server
IDLE_CHECK_S = 5.0
REFUSED_RETRY_S = 10.0
HELLO_TIMEOUT_S = 10.0


class UserServer:
    def __init__(self, inst: Installation, config: ServerConfig, server_uid: int,
                 socket_path: Path) -> None:
        self.inst, self.config, self.server_uid = inst, config, server_uid
        self.socket_path = socket_path
        self.user = user_name(os.geteuid())
        self.key = load_signing_key(create=True)
        self.server: Channel | None = None
        self.server_up = asyncio.Event()
        self.links: dict[str, ExecLink] = {}
        self.hosts: dict[str, HostAddress] = {}
        self.clients = 0
        self.last_activity = time.monotonic()
        self.stopping = asyncio.Event()
        self.refusal: PermissionDenied | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.database: str | None = None   # hq-server's database identity, from its welcome
        self.ssh_options = {"policy": config.host_key_policy,
                            "connect_timeout": config.connect_timeout_s}

    @property
    def exec_settings(self) -> ExecSettings:
        """What our exec-servers are told: timeouts, and whose jobs the link speaks for."""
        config = self.config
        return ExecSettings(idle_timeout_s=config.exec_server_idle_s, lease_s=config.lease_s,
                            heartbeat_interval_s=config.heartbeat_interval_s,
                            database=self.database)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- commands ------------------------------------------------------------------------

    async def start(self) -> None:
        self.listener = await asyncio.start_unix_server(self._accept, path=str(self.socket_path),
                                                        limit=MAX_FRAME)
        self.socket_path.chmod(0o600)
        self.spawn(self._server_loop())
        self.spawn(self._idle_loop())
        self.spawn(self._lease_loop())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        creds = peer_credentials(writer.get_extra_info("socket"))
        channel = Channel(reader, writer, f"command pid {creds.pid}")
        if creds.uid != os.geteuid():
            channel.send(error_message(PermissionDenied("this user-server serves only its own "
                                                        "user")))
            channel.close()
            return
        self.clients += 1
        self.last_activity = time.monotonic()
        try:
            hello = await asyncio.wait_for(channel.receive_as(Hello), HELLO_TIMEOUT_S)
            if hello is None:
                return
            channel.version = check_hello(hello, {"cli"})
            channel.accept(CLI_SENDS)
            channel.send(welcome(channel.version, user=self.user, pid=os.getpid()))
            await channel.serve(lambda message: self.spawn(self._answer(channel, message)))
        except (HqError, TimeoutError) as err:
            if isinstance(err, HqError):
                channel.send(error_message(err))
            channel.close()
        finally:
            self.clients -= 1
            self.last_activity = time.monotonic()

    async def _answer(self, channel: Channel, message: Request) -> None:
        """Answer one request of a command (directly, or relayed by an exec-server)."""
        request = message.request if isinstance(message, Relay) else message
        try:
            channel.reply(message, await self._forward(request))
        except HqError as err:
            channel.reply_error(message, err)
        except (TimeoutError, ConnectionError) as err:
            channel.reply_error(message, Unavailable(f"hq-server did not answer: {err}"))

    async def _forward(self, request: Request) -> Any:
        """Pass a command's request to hq-server (signing a submission's jobs first)."""
        if isinstance(request, Submit):
            request = self._signed(request)
        timeout = float(getattr(request, "timeout_s", 0) or 0) + 60.0
        return await (await self._server()).request(request, timeout=timeout)

    def _signed(self, request: Submit) -> Submit:
        digest = submission_digest(request.environment, request.umask)
        jobs = [msgspec.structs.replace(spec, signature=sign_job(
                    self.key, msgspec.structs.replace(spec, signature=None), self.user, digest))
                for spec in request.jobs]
        return msgspec.structs.replace(request, jobs=jobs)

    async def _server(self) -> Channel:
        if self.refusal is not None and not self.server_up.is_set():
            raise self.refusal
        if not self.server_up.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server_up.wait(), SERVER_WAIT_S)
        if self.server is None or not self.server_up.is_set():
            raise Unavailable(f"hq-server is not running (no answer on "
                              f"{self.config.socket_path}): ask the hq admin to start it")
        return self.server

    # --- hq-server -----------------------------------------------------------------------

    async def _server_loop(self) -> None:
        delay = 0.1
        while not self.stopping.is_set():
            try:
                channel, answer = await open_unix_channel(
                    str(self.config.socket_path), "hq-server", "userd", "hq-user-server",
                    accepts=SERVER_SENDS_USERD, expect_uid=self.server_uid)
            except (OSError, HqError) as err:
                if isinstance(err, PermissionDenied):
                    # Tell the user why (every command gets this answer); the admin may add
                    # them and reload, so ask again now and then.
                    if self.refusal is None:
                        log.error("hq-server refused us: %s", err)
                    self.refusal = err
                    await asyncio.sleep(REFUSED_RETRY_S)
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            self.refusal = None
            if answer.database != self.database:
                if self.database is not None:
                    # a new database (recreated, or moved to MariaDB): our links speak for
                    # the old one's jobs; make new ones
                    log.warning("hq-server: its database is now %s (was %s): reconnecting "
                                "to the exec-servers", answer.database, self.database)
                    for link in list(self.links.values()):
                        link.close()
                    self.links.clear()
                self.database = answer.database
            adopt = answer.adopt or []
            log.info("hq-server: connected (protocol %d); adopting hosts %s", channel.version,
                     [h.name for h in adopt])
            self.server = channel
            self.server_up.set()
            for host in adopt:
                self.hosts[host.name] = host
                self.spawn(self._ensure_link(host.name, None))
            for link in list(self.links.values()):
                if link.up:
                    self.spawn(self._resync(link))
            await channel.serve(self._on_server_message)
            self.server_up.clear()
            self.server = None
            log.warning("hq-server: connection lost, reconnecting")

    def _on_server_message(self, message: Any) -> None:
        FROM_SERVER[type(message)](self, message)

    def _on_run(self, message: Run) -> None:
        if message.host is None:
            log.warning("hq-server: a run without a host ignored")
            return
        self.hosts[message.host.name] = message.host
        self._run(message.host.name, message)

    def _on_superseded(self, message: Superseded) -> None:
        log.warning("user-server: pid %d, a newer user-server of %s, took over: exiting",
                    message.by_pid, self.user)
        self.stopping.set()

    def _on_order(self, message: CancelJobs | Ack) -> None:
        """A cancel or an ack for one host's exec-server: passed on without the host."""
        if message.host is not None:
            self.spawn(self._via_link(message.host,
                                      msgspec.structs.replace(message, host=None)))

    def _to_server(self, message: Any) -> None:
        # While hq-server is away reports are dropped: the exec-server keeps every ended job
        # until it is acknowledged, and the sync after reconnecting carries it again.
        if self.server is not None and self.server_up.is_set():
            try:
                self.server.send(message)
            except HqError as err:
                log.error("hq-server: cannot send %s: %s", type(message).__name__, err)

    # --- exec-servers --------------------------------------------------------------------

    def _run(self, host: str, message: Run) -> None:
        """Check every job's signature, then hand the good ones to the host's exec-server;
        refused ones are reported as ended, so that hq-server does not wait for them."""
        good, refused = [], []
        digests: dict[str, str | None] = {}  # one hash of an environment per submission
        for job in message.jobs:
            sub_id = str(job.submission_id)
            if sub_id not in digests:
                sub = message.submissions.get(sub_id)
                digests[sub_id] = None if sub is None else submission_digest(sub.environment,
                                                                              sub.umask)
            digest = digests[sub_id]
            ok = digest is not None and job_signature_ok(self.key, job.spec, self.user, digest)
            (good if ok else refused).append(job)
        if refused:
            log.warning("host %s: refusing jobs with a bad signature: %s", host,
                        [j.id for j in refused])
            self._to_server(JobEvents(host=host, events=[
                JobEnded(id=j.id, at=time.time(), reason="refused: bad signature")
                for j in refused]))
        if good:
            self.spawn(self._via_link(host, msgspec.structs.replace(
                message, jobs=good, owner=self.user)))

    async def _via_link(self, host: str, message: Any) -> None:
        await self._ensure_link(host, message)

    async def _ensure_link(self, host: str, first: Any) -> ExecLink | None:
        """The link to ``host``, made if needed; ``first`` is sent through it in order."""
        link = self.links.get(host)
        if link is not None:
            if first is not None:
                link.send(first)  # queued by the link itself until its first sync is done
            return link
        where = self.hosts.get(host) or HostAddress(name=host, address=host)
        link = ExecLink(host, where.address, where.ssh_port, self.exec_settings,
                        self.ssh_options, self._on_exec_message, self._on_link_lost)
        self.links[host] = link
        if first is not None:
            link.queued.append(first)
        try:
            state = await link.connect()
        except HqError as err:
            log.warning("host %s: %s", host, err)
            if self.links.get(host) is link:
                del self.links[host]
            ids = [j.id for m in link.queued if isinstance(m, Run) for j in m.jobs]
            # A host key or login problem is this user's, not the host's: others may use it.
            self._to_server(HostStateReport(host=host, state="unreachable", reason=str(err),
                                            user_only=is_user_problem(err)))
            if ids:
                self._to_server(Undeliverable(host=host, ids=ids, reason=str(err)))
            return None
        self._send_sync(link, state)
        link.flush_queue()
        return link

    def _send_sync(self, link: ExecLink, state: SyncReply) -> None:
        delivering = [j.id for m in link.queued if isinstance(m, Run) for j in m.jobs]
        self._to_server(Sync(host=link.host, running=state.running, ended=state.ended,
                             delivering=delivering))
        self._to_server(HostStateReport(host=link.host, state="up"))

    async def _resync(self, link: ExecLink) -> None:
        try:
            state = await link.sync()
        except (HqError, TimeoutError) as err:
            log.warning("host %s: sync failed: %s", link.host, err)
            return
        self._send_sync(link, state)

    def _on_exec_message(self, link: ExecLink, message: Any) -> None:
        self.last_activity = time.monotonic()
        FROM_EXEC[type(message)](self, link, message)

    def _on_report(self, link: ExecLink, message: JobEvents | Heartbeat) -> None:
        self._to_server(msgspec.structs.replace(message, host=link.host))

    def _on_relay(self, link: ExecLink, message: Relay) -> None:
        if link.channel is not None:
            self.spawn(self._answer(link.channel, message))

    def _on_link_lost(self, link: ExecLink) -> None:
        if self.links.get(link.host) is link:
            del self.links[link.host]
            if not self.stopping.is_set():
                # Jobs may still run there: reconnect so their ends are not missed.
                self.spawn(self._reconnect_later(link.host))

    async def _reconnect_later(self, host: str) -> None:
        """Try again until the link is back: jobs may still run there, and their ends must
        reach hq-server. After twice the lease their jobs are requeued anyway, so stop."""
        give_up = time.monotonic() + 2 * self.config.lease_s + self.config.lease_grace_s
        delay = 1.0
        while not self.stopping.is_set() and time.monotonic() < give_up:
            await asyncio.sleep(delay)
            if host in self.links:
                return  # something else (a new run) connected it meanwhile
            if await self._ensure_link(host, None) is not None:
                return
            delay = min(delay * 2, 5.0)

    async def _lease_loop(self) -> None:
        """Renew every exec-server's lease, but only while hq-server hears from us: an
        exec-server cut off from hq-server must let its lease run out."""
        while not self.stopping.is_set():
            await asyncio.sleep(self.config.heartbeat_interval_s)
            if self.server_up.is_set():
                for link in list(self.links.values()):
                    link.renew_lease()

    # --- lifetime ------------------------------------------------------------------------

    async def _idle_loop(self) -> None:
        """Exit after an idle period with no command connected and no unfinished job; refused
        by hq-server, or with hq-server down, after the idle period whatever it is. (Jobs keep
        running in the exec-servers, whose ends wait there for the next user-server.)"""
        while not self.stopping.is_set():
            await asyncio.sleep(IDLE_CHECK_S)
            idle = time.monotonic() - self.last_activity
            if self.clients or idle < self.config.user_server_idle_s:
                continue
            if self.refusal is not None or self.server is None:
                log.info("user-server: idle for %.0f s and %s, exiting", idle,
                         "refused by hq-server" if self.refusal else "hq-server is not there")
                self.stopping.set()
                continue
            try:
                reply = await self.server.request(Ping(), timeout=10.0)
            except (HqError, TimeoutError):
                continue
            if reply.unfinished == 0:
                log.info("user-server: idle for %.0f s with nothing to do, exiting", idle)
                self.stopping.set()

    async def close(self) -> None:
        self.listener.close()
        for link in list(self.links.values()):
            link.close()
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()


FROM_SERVER = {Run: UserServer._on_run, CancelJobs: UserServer._on_order,
               Ack: UserServer._on_order, Superseded: UserServer._on_superseded}
"""What hq-server sends a user-server -> its handler."""

FROM_EXEC = {JobEvents: UserServer._on_report, Heartbeat: UserServer._on_report,
             Relay: UserServer._on_relay}
"""What an exec-server sends its user-server -> its handler."""

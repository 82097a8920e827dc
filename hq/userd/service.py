"""hq-user-server: one user's relay between their commands, hq-server and their exec-servers.

It runs as the user. Commands (hq-submit, hq-client) reach it on a socket in the user's 0700
runtime directory, and only processes of the same uid are served. It signs each submitted job
with the user's key, passes requests on to hq-server (which knows the user from the kernel),
and carries work from hq-server to the user's exec-servers and their reports back. When
hq-server goes away it keeps the exec-servers and their jobs, reconnects, and reports their
whole state again (``sync``) so that nothing finished in the meantime is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from hq.auth import job_signature_ok, load_signing_key, sign_job, user_name
from hq.config import Installation, ServerConfig
from hq.errors import HqError, PermissionDenied, Unavailable, UsageError
from hq.jobspec import JobSpec, submission_digest
from hq.protocol import (
    MAX_FRAME,
    Channel,
    Message,
    check_hello,
    error_message,
    open_unix_channel,
    peer_credentials,
)
from hq.userd.execlink import ExecLink, is_user_problem

log = logging.getLogger(__name__)

FORWARDED = {"ping", "submit", "status", "jobs", "show", "cancel", "hold", "release", "wait"}
SERVER_WAIT_S = 10.0      # how long a command waits for a restarting hq-server
IDLE_CHECK_S = 5.0
REFUSED_RETRY_S = 10.0


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
        self.hosts: dict[str, dict[str, Any]] = {}    # name -> {"address", "ssh_port"}
        self.clients = 0
        self.last_activity = time.monotonic()
        self.stopping = asyncio.Event()
        self.refusal: PermissionDenied | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.exec_settings = {"idle_timeout_s": config.exec_server_idle_s,
                              "lease_s": config.lease_s,
                              "heartbeat_interval_s": config.heartbeat_interval_s}
        self.ssh_options = {"policy": config.host_key_policy,
                            "connect_timeout": config.connect_timeout_s}

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
            hello = await asyncio.wait_for(channel.receive(), 10.0)
            if hello is None:
                return
            check_hello(hello, {"cli"})
            channel.send({"type": "welcome", "version": 1, "user": self.user,
                          "pid": os.getpid()})
            await channel.serve(lambda message: self._on_command(channel, message))
        except (HqError, TimeoutError) as err:
            if isinstance(err, HqError):
                channel.send(error_message(err))
            channel.close()
        finally:
            self.clients -= 1
            self.last_activity = time.monotonic()

    def _on_command(self, channel: Channel, message: Message) -> None:
        self.spawn(self._answer(channel, message))

    async def _answer(self, channel: Channel, message: Message) -> None:
        """Answer one request of a command (directly, or relayed by an exec-server)."""
        try:
            request = message.get("request", {}) if message["type"] == "relay" else message
            channel.reply(message, **await self._forward(request))
        except HqError as err:
            channel.reply_error(message, err)
        except (TimeoutError, ConnectionError) as err:
            channel.reply_error(message, Unavailable(f"hq-server did not answer: {err}"))

    async def _forward(self, message: Message) -> Message:
        kind = message.get("type")
        if kind not in FORWARDED:
            raise UsageError(f"unknown request {kind!r}")
        request = {k: v for k, v in message.items() if k != "rid"}
        if kind == "submit":
            self._sign(request)
        timeout = float(request.get("timeout_s") or 0) + 60.0
        reply = await (await self._server()).request(request, timeout=timeout)
        return {k: v for k, v in reply.items() if k not in ("type", "rid")}

    def _sign(self, request: Message) -> None:
        env, umask = request.get("environment"), request.get("umask")
        if not isinstance(env, dict) or not isinstance(umask, int):
            raise UsageError("submit needs environment and umask")
        digest = submission_digest(env, umask)
        jobs = request.get("jobs")
        if not isinstance(jobs, list):
            raise UsageError("submit needs a list of jobs")
        for job in jobs:
            spec = JobSpec.from_wire({**job, "signature": None})
            job["signature"] = sign_job(self.key, spec, self.user, digest)

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
                channel, welcome = await open_unix_channel(
                    str(self.config.socket_path), "hq-server", "userd", "hq-user-server",
                    expect_uid=self.server_uid)
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
            log.info("hq-server: connected; adopting hosts %s",
                     [h["name"] for h in welcome.get("adopt", [])])
            self.server = channel
            self.server_up.set()
            for host in welcome.get("adopt", []):
                self.hosts[host["name"]] = host
                self.spawn(self._ensure_link(host["name"], None))
            for link in list(self.links.values()):
                if link.up:
                    self.spawn(self._resync(link))
            await channel.serve(self._on_server_message)
            self.server_up.clear()
            self.server = None
            log.warning("hq-server: connection lost, reconnecting")

    def _on_server_message(self, message: Message) -> None:
        kind, host = message["type"], message.get("host")
        if kind == "run":
            host_name = host["name"]
            self.hosts[host_name] = host
            self._run(host_name, message)
        elif kind in ("cancel", "ack") and isinstance(host, str):
            self.spawn(self._via_link(host, {"type": kind, "ids": message.get("ids", []),
                                             "reason": message.get("reason")}))
        else:
            log.warning("hq-server: unexpected message %r", kind)

    def _to_server(self, message: Message) -> None:
        # While hq-server is away reports are dropped: the exec-server keeps every ended job
        # until it is acknowledged, and the sync after reconnecting carries it again.
        if self.server is not None and self.server_up.is_set():
            self.server.send(message)

    # --- exec-servers --------------------------------------------------------------------

    def _run(self, host: str, message: Message) -> None:
        good, refused = [], []
        submissions = message.get("submissions", {})
        digests: dict[str, str] = {}   # one hash of an environment per submission, not per job
        for job in message.get("jobs", []):
            sub_id = str(job.get("submission_id"))
            try:
                if sub_id not in digests:
                    sub = submissions.get(sub_id, {})
                    digests[sub_id] = submission_digest(sub.get("environment", {}),
                                                        sub.get("umask", 0))
                spec = JobSpec.from_wire(job.get("spec"))
                ok = job_signature_ok(self.key, spec, self.user, digests[sub_id])
            except HqError:
                ok = False
            (good if ok else refused).append(job)
        if refused:
            log.warning("host %s: refusing jobs with a bad signature: %s", host,
                        [j.get("id") for j in refused])
            self._to_server({"type": "job_events", "host": host, "events": [
                {"id": j.get("id"), "event": "ended", "at": time.time(), "started_at": None,
                 "pid": None, "exit_code": None, "signal": None, "cpu_time_s": None,
                 "max_rss_kb": None, "reason": "refused: bad signature"} for j in refused]})
        if good:
            self.spawn(self._via_link(host, {**message, "jobs": good, "owner": self.user}))

    async def _via_link(self, host: str, message: Message) -> None:
        await self._ensure_link(host, message)

    async def _ensure_link(self, host: str, first: Message | None) -> ExecLink | None:
        """The link to ``host``, made if needed; ``first`` is sent through it in order."""
        link = self.links.get(host)
        if link is not None:
            if first is not None:
                link.send(first)  # queued by the link itself until its first sync is done
            return link
        where = self.hosts.get(host, {})
        link = ExecLink(host, where.get("address", host), int(where.get("ssh_port", 22)),
                        self.exec_settings, self.ssh_options, self._on_exec_message,
                        self._on_link_lost)
        self.links[host] = link
        if first is not None:
            link.queued.append(first)
        try:
            state = await link.connect()
        except HqError as err:
            log.warning("host %s: %s", host, err)
            if self.links.get(host) is link:
                del self.links[host]
            ids = [j["id"] for m in link.queued if m.get("type") == "run" for j in m["jobs"]]
            # A host key or login problem is this user's, not the host's: others may use it.
            self._to_server({"type": "host_state", "host": host, "state": "unreachable",
                             "reason": str(err), "user_only": is_user_problem(err)})
            if ids:
                self._to_server({"type": "undeliverable", "host": host, "ids": ids,
                                 "reason": str(err)})
            return None
        self._send_sync(link, state)
        link.flush_queue()
        return link

    def _send_sync(self, link: ExecLink, state: Message) -> None:
        delivering = [j["id"] for m in link.queued if m.get("type") == "run" for j in m["jobs"]]
        self._to_server({"type": "sync", "host": link.host,
                         "running": state.get("running", []), "ended": state.get("ended", []),
                         "delivering": delivering})
        self._to_server({"type": "host_state", "host": link.host, "state": "up",
                         "reason": None})

    async def _resync(self, link: ExecLink) -> None:
        try:
            state = await link.channel.request({"type": "sync"}, timeout=30.0)  # type: ignore[union-attr]
        except (HqError, TimeoutError) as err:
            log.warning("host %s: sync failed: %s", link.host, err)
            return
        self._send_sync(link, state)

    def _on_exec_message(self, link: ExecLink, message: Message) -> None:
        kind = message["type"]
        self.last_activity = time.monotonic()
        if kind in ("job_events", "heartbeat"):
            self._to_server({**message, "host": link.host})
        elif kind == "relay" and link.channel is not None:
            self.spawn(self._answer(link.channel, message))
        else:
            log.warning("host %s: unexpected message %r from exec-server", link.host, kind)

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
                    if link.up and link.ready.is_set():
                        link.send({"type": "lease"})

    # --- lifetime ------------------------------------------------------------------------

    async def _idle_loop(self) -> None:
        """Exit after an idle period with no command connected and no unfinished job."""
        while not self.stopping.is_set():
            await asyncio.sleep(IDLE_CHECK_S)
            idle = time.monotonic() - self.last_activity
            if self.refusal is not None and not self.clients and idle > 60:
                log.info("user-server: refused by hq-server and idle, exiting")
                self.stopping.set()
            if self.clients or idle < self.config.user_server_idle_s or self.server is None:
                continue
            try:
                reply = await self.server.request({"type": "ping"}, timeout=10.0)
            except (HqError, TimeoutError):
                continue
            if reply.get("unfinished", 1) == 0:
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

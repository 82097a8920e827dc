"""hq-user-server: one user's relay between their commands, hq-server and their exec-servers.

It runs as the user. Commands (hq-submit, hq-client) reach it on a socket in the user's 0700
runtime directory, and only processes of the same uid are served. It signs each submitted job
with the user's key, passes requests on to hq-server (which knows the user from the kernel),
and carries work from hq-server to the user's exec-servers and their reports back. When
hq-server goes away it keeps the exec-servers and their jobs, reconnects, and reports their
whole state again (``Sync``) so that nothing finished in the meantime is lost.

What each peer may send and who handles it: ``FROM_SERVER`` and ``FROM_EXEC`` below (class ->
handler); a command's requests are all passed on to hq-server (``hq.userd.submitting``).
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

from hq.auth import load_signing_key, state_dir, user_name
from hq.config import Installation, ServerConfig, exec_server_idle_s
from hq.errors import Busy, ConfigError, HqError, PermissionDenied, Unavailable
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
    ExecServerReport,
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
    RunJob,
    SubmissionEnded,
    Superseded,
    Sync,
    SyncReply,
    Undeliverable,
    Watch,
    Withdraw,
)
from hq.userd.execlink import ExecLink, is_user_problem
from hq.userd.ledger import Ledger
from hq.userd.notify import act_on
from hq.userd.signing import Signer
from hq.userd.submitting import Submitting

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
        self.signer = Signer(self.key, self.user)
        self.server: Channel | None = None
        self.server_up = asyncio.Event()
        self.links: dict[str, ExecLink] = {}
        self.hosts: dict[str, HostAddress] = {}
        self.clients = 0
        self.last_activity = time.monotonic()
        self.stopping = asyncio.Event()
        self.stop_reason = "stopped"   # what its exec-servers are told at its end
        self.refusal: PermissionDenied | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.database: str | None = None   # hq-server's database identity, from its welcome
        self.ledger: Ledger | None = None
        self.submitting = Submitting(self.signer, self._ledger_for)
        self.watching: set[Channel] = set()   # command connections with a Watch waiting
        self.ledger_database: str | None = None
        self.started = time.monotonic()
        self.host_contact: dict[str, float] = {}   # host -> last word from its exec-server
        # host -> job ids hq-server handed us for it that are not yet sent or refused: a sync
        # meanwhile lists them as on their way, or hq-server would take them for lost
        self.in_flight: dict[str, set[int]] = {}
        self.link_failures: dict[str, str] = {}   # host -> why the last link to it failed
        self.exec_busy: dict[str, float] = {}   # host -> last job sent, event or busy heartbeat
        self.ssh_options = {"policy": config.host_key_policy,
                            "connect_timeout": config.connect_timeout_s}

    def exec_settings(self, host: str) -> ExecSettings:
        """What our exec-server on ``host`` is told: timeouts (its idle timeout from
        etc/cluster.tab, else the server's), and whose jobs the link speaks for."""
        config = self.config
        try:
            idle_s = exec_server_idle_s(self.inst, host, config.exec_server_idle_s)
        except ConfigError as err:   # a file mid-edit must not keep jobs from starting
            log.warning("host %s: idle timeout from [server]: %s", host, err)
            idle_s = config.exec_server_idle_s
        return ExecSettings(idle_timeout_s=idle_s, lease_s=config.lease_s,
                            heartbeat_interval_s=config.heartbeat_interval_s,
                            database=self.database,
                            memory_enforce=config.memory_enforce,  # type: ignore[arg-type]
                            pin_cpus=config.pin_cpus)

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
            self.submitting.closed(channel)   # a submission left open is never stored
            self.clients -= 1
            self.last_activity = time.monotonic()

    async def _answer(self, channel: Channel, message: Request) -> None:
        """Answer one request of a command (directly, or relayed by an exec-server)."""
        request = message.request if isinstance(message, Relay) else message
        watch = isinstance(request, Watch)
        if watch:
            # a dashboard's long poll: one waits per command connection, so that one
            # command cannot take up the few hq-server keeps for this user-server
            if channel in self.watching:
                channel.reply_error(message, Busy("a watch request is waiting on this "
                                                  "connection already"))
                return
            self.watching.add(channel)
        try:
            channel.reply(message, await self._forward(request, channel))
        except HqError as err:
            channel.reply_error(message, err)
        except (TimeoutError, ConnectionError) as err:
            channel.reply_error(message, Unavailable(f"hq-server did not answer: {err}"))
        finally:
            if watch:
                self.watching.discard(channel)

    async def _forward(self, request: Request, client: Channel | None = None) -> Any:
        """Pass a command's request to hq-server (``hq.userd.submitting``)."""
        return await self.submitting.forward(await self._server(), request, client)

    def _ledger_for(self, database: str) -> Ledger:
        if self.ledger is None or self.ledger_database != database:
            if self.ledger is not None:
                self.ledger.close()
            self.ledger = Ledger.open(state_dir() / "ledger", database, time.monotonic())
            self.ledger_database = database
        return self.ledger

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

    def _on_submission_ended(self, message: SubmissionEnded) -> None:
        if not self.signer.notification_ok(message):
            log.warning("submission %s: hq-server asks to notify something this user-server "
                        "did not sign: ignored", message.submission_id)
            return
        self.spawn(act_on(message, self.user, os.path.expanduser("~")))

    def _on_superseded(self, message: Superseded) -> None:
        log.warning("user-server: pid %d, a newer user-server of %s, took over: exiting",
                    message.by_pid, self.user)
        self.stopping.set()

    def _on_order(self, message: CancelJobs | Withdraw | Ack) -> None:
        """A cancel, a withdrawal or an ack for one host's exec-server: passed on without the
        host."""
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
        self.in_flight.setdefault(host, set()).update(j.id for j in message.jobs)
        self.spawn(self._delivered(host, message))

    async def _delivered(self, host: str, message: Run) -> None:
        try:
            await self._deliver(host, message)
        finally:
            flying = self.in_flight.get(host)
            if flying is not None:
                flying.difference_update(j.id for j in message.jobs)
                if not flying:
                    del self.in_flight[host]

    async def _deliver(self, host: str, message: Run) -> None:
        """Hand ``message``'s jobs to ``host``'s exec-server, each only with a good signature
        and when the ledger allows it (DESIGN §3: hq-server's word alone runs nothing).

        The link comes first: its sync tells the ledger what that exec-server has (a job
        handed over before, and lost with its lease, may go again). Refused jobs are reported
        as ended, so that hq-server does not wait for them; one handed to another host that
        may still run it waits until that host's exec-server has told, or its lease has run
        out."""
        ledger = self._ledger_for(self.database or "")
        signed, refused = self.signer.check_run(message, self.database or "", ledger.v1_cutoff)
        good: list[RunJob] = []
        waiting: list[tuple[RunJob, str]] = []
        link = None
        if signed:
            link = await self._ensure_link(host, None)
            if link is not None:
                await link.settled()
            if link is None or not link.up:
                # the reason ssh or the exec-server gave (host key, login, ...), for the user
                why = (link.failure if link is not None else None) or self.link_failures.get(
                    host, "its exec-server cannot be reached")
                self._to_server(Undeliverable(host=host, ids=[j.id for j in signed],
                                              reason=why))
                signed = []
        if signed:
            good, waiting, unreleased = ledger.hand_over(signed, host, self._silent_for,
                                                         self.config.lease_s, time.monotonic())
            refused += unreleased
        if refused:
            log.warning("host %s: refusing jobs %s", host,
                        [(job.id, why) for job, why in refused[:20]])
            self._to_server(JobEvents(host=host, events=[
                JobEnded(id=job.id, at=time.time(), reason=why, attempt=job.attempt)
                for job, why in refused]))
        if good and link is not None:
            link.send(msgspec.structs.replace(message, jobs=good, owner=self.user))
        if waiting:
            await self._deliver_later(host, message, waiting)

    def _silent_for(self, host: str) -> float:
        """How long no exec-server on ``host`` has been heard by this user-server."""
        return time.monotonic() - self.host_contact.get(host, self.started)

    async def _deliver_later(self, host: str, message: Run,
                             waiting: list[tuple[RunJob, str]]) -> None:
        """Jobs last handed to another host: ask that host's exec-server (its sync settles
        the ledger), or wait until its lease has run out, then try again."""
        others = {other for _job, other in waiting}
        for other in others:
            linked = await self._ensure_link(other, None)
            if linked is not None:
                await linked.settled()
        wait = max((self.config.lease_s - self._silent_for(o) for o in others), default=0.0)
        if wait > 0:
            log.info("host %s: jobs %s wait %.0f s: handed to %s before, maybe still there",
                     host, [j.id for j, _o in waiting][:20], wait, sorted(others))
            await asyncio.sleep(wait + 1.0)
        await self._deliver(host, msgspec.structs.replace(message,
                                                          jobs=[j for j, _o in waiting]))

    async def _via_link(self, host: str, message: Any) -> None:
        await self._ensure_link(host, message)

    async def _ensure_link(self, host: str, first: Any) -> ExecLink | None:
        """The link to ``host``, made if needed; ``first`` is sent through it in order."""
        self.exec_busy[host] = time.monotonic()   # a new link, too, waits for its heartbeat
        link = self.links.get(host)
        if link is not None:
            if first is not None:
                link.send(first)  # queued by the link itself until its first sync is done
            return link
        where = self.hosts.get(host) or HostAddress(name=host, address=host)
        link = ExecLink(host, where.address, where.ssh_port, self.exec_settings(host),
                        self.ssh_options, self._on_exec_message, self._on_link_lost)
        self.links[host] = link
        if first is not None:
            link.queued.append(first)
        try:
            state = await link.connect()
        except HqError as err:
            log.warning("host %s: %s", host, err)
            self.link_failures[host] = str(err)
            if self.links.get(host) is link:
                del self.links[host]
            ids = [j.id for m in link.queued if isinstance(m, Run) for j in m.jobs]
            if self.ledger is not None:
                for job_id in ids:   # never handed over: they may go elsewhere
                    self.ledger.came_to_nothing(job_id)
            # A host key or login problem is this user's, not the host's: others may use it.
            self._to_server(HostStateReport(host=host, state="unreachable", reason=str(err),
                                            user_only=is_user_problem(err)))
            if ids:
                self._to_server(Undeliverable(host=host, ids=ids, reason=str(err)))
            return None
        self.link_failures.pop(host, None)
        self._report_exec_server(link, "running")
        self._send_sync(link, state)
        link.flush_queue()
        return link

    def _report_exec_server(self, link: ExecLink, state: str, reason: str | None = None) -> None:
        """What became of an exec-server (the exec_servers table); hq-server of protocol 1
        knows no such report."""
        if self.server is not None and self.server.version >= 2:
            self._to_server(ExecServerReport(host=link.host, pid=link.daemon_pid,
                                             state=state, reason=reason))  # type: ignore[arg-type]

    def _send_sync(self, link: ExecLink, state: SyncReply) -> None:
        state = link.with_attempts(state)
        delivering = sorted({j.id for m in link.queued if isinstance(m, Run) for j in m.jobs}
                            | self.in_flight.get(link.host, set()))
        self.host_contact[link.host] = time.monotonic()
        if self.ledger is not None:
            for event in state.ended:
                self.ledger.ended_event(event)
            known = ({r.id for r in state.running} | {e.id for e in state.ended}
                     | {q.id for q in state.queued or ()} | set(delivering))
            for job_id in self.ledger.out_on(link.host):
                if job_id not in known:   # handed over, and the exec-server never had it
                    self.ledger.came_to_nothing(job_id)
        self._to_server(Sync(host=link.host, running=state.running, ended=state.ended,
                             delivering=delivering, queued=list(state.queued or ()),
                             # an exec-server of protocol 1 keeps no queue of waiting jobs
                             queues=link.channel is not None and link.channel.version >= 2))
        self._to_server(HostStateReport(host=link.host, state="up"))

    async def _resync(self, link: ExecLink) -> None:
        try:
            state = await link.sync()
        except (HqError, TimeoutError) as err:
            log.warning("host %s: sync failed: %s", link.host, err)
            return
        self._send_sync(link, state)

    def _on_exec_message(self, link: ExecLink, message: Any) -> None:
        self.host_contact[link.host] = now = time.monotonic()
        if not isinstance(message, Heartbeat) or message.running:
            self.exec_busy[link.host] = now
        if not isinstance(message, Heartbeat):
            # a heartbeat is contact, not work: else a user-server linked to an idle
            # exec-server would never be idle, and neither would the exec-server
            self.last_activity = now
        FROM_EXEC[type(message)](self, link, message)

    def _on_report(self, link: ExecLink, message: JobEvents | Heartbeat) -> None:
        if isinstance(message, JobEvents):
            message = link.with_attempts(message)
        if isinstance(message, JobEvents) and self.ledger is not None:
            for event in message.events:
                if isinstance(event, JobEnded):
                    self.ledger.ended_event(event)
        self._to_server(msgspec.structs.replace(message, host=link.host))

    def _on_relay(self, link: ExecLink, message: Relay) -> None:
        if link.channel is not None:
            self.spawn(self._answer(link.channel, message))

    def _on_link_lost(self, link: ExecLink) -> None:
        if self.links.get(link.host) is link:
            del self.links[link.host]
            self._report_exec_server(link, "connection lost")
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
            # a short idle timeout is checked as often as it needs (never more than twice a s)
            await asyncio.sleep(min(IDLE_CHECK_S, max(0.5, self.config.user_server_idle_s / 2)))
            self._let_go_idle_exec_servers()
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
                self.stop_reason = "idle timeout"
                self.stopping.set()

    def _let_go_idle_exec_servers(self) -> None:
        """Let go of each exec-server that had no job for its host's idle timeout: reported
        as ``idle timeout`` and not linked again until a job goes there; with no user-server
        linked, it exits after that timeout by itself."""
        now = time.monotonic()
        for host, link in list(self.links.items()):
            idle_s = link.settings.idle_timeout_s or self.config.exec_server_idle_s
            if link.connected and not self.in_flight.get(host) \
                    and now - self.exec_busy.setdefault(host, now) >= idle_s:
                log.info("host %s: exec-server idle for %.0f s, letting it go", host,
                         now - self.exec_busy[host])
                del self.links[host]   # first: its end is then no loss to reconnect after
                self._report_exec_server(link, "idle timeout")
                link.close()

    async def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
        self.listener.close()
        for link in list(self.links.values()):
            # let go, so that it exits after its own idle time: no longer lost
            self._report_exec_server(link, self.stop_reason)
            link.close()
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()


FROM_SERVER = {Run: UserServer._on_run, CancelJobs: UserServer._on_order,
               Withdraw: UserServer._on_order, Ack: UserServer._on_order,
               Superseded: UserServer._on_superseded,
               SubmissionEnded: UserServer._on_submission_ended}
"""What hq-server sends a user-server -> its handler."""

FROM_EXEC = {JobEvents: UserServer._on_report, Heartbeat: UserServer._on_report,
             Relay: UserServer._on_relay}
"""What an exec-server sends its user-server -> its handler."""

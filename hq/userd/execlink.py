"""The user-server's link to its exec-server on one host.

The link is ``hq-exec-server --bridge``, whose stdin and stdout carry the protocol: a child
process for this host, a command over ssh (paramiko, hq.ssh) for the others. The
bridge finds or starts the long-lived exec-server daemon there, so jobs outlive the link and a
new link re-adopts them: the first thing each new link does is ``sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from hq.errors import HqError, Unavailable
from hq.protocol import MAX_FRAME, OLDEST_VERSION, PROTOCOL_VERSION, Channel, hello
from hq.protocol.channel import is_version_refusal
from hq.protocol.messages import (
    EXECD_SENDS_USERD,
    ExecSettings,
    JobEvents,
    Lease,
    Message,
    Run,
    SyncReply,
    SyncRequest,
    Welcome,
    Withdraw,
)

log = logging.getLogger(__name__)

SPAWN_TIMEOUT_S = 20.0
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_user_problem(err: Exception) -> bool:
    """Whether a failure to reach a host is the user's own (host key, login), not the host's."""
    from hq.ssh import HostKeyChanged, HostKeyUnknown, LoginFailed

    return isinstance(err, HostKeyUnknown | HostKeyChanged | LoginFailed)


def is_local(address: str) -> bool:
    """Whether ``address`` names this machine (so no ssh is needed to reach it)."""
    return address in LOCAL_NAMES or address in (socket.gethostname(), socket.getfqdn())


# A frozen exec-server (scripts/makeFreezedVersion.py) at this path under HQPATH on a host runs
# there instead of this Python, for hosts that cannot run the virtualenv; HQ_FROZEN=no in the
# user-server's environment opts out. Over ssh the host itself decides (the file may exist there
# only), with this fixed script; its arguments are HQPATH, HQ_FROZEN and the fallback command.
FROZEN_EXEC_SERVER = ("var", "frozen", "hq-exec-server", "hq-exec-server")
_REMOTE_CHOICE = ('f="$1/var/frozen/hq-exec-server/hq-exec-server"; frozen=$2; shift 2; '
                  'if [ "$frozen" != no ] && [ -f "$f" ] && [ -x "$f" ]; then '
                  'exec "$f" --bridge; fi; exec "$@"')


def local_bridge_argv(environ: Mapping[str, str]) -> list[str]:
    """The command that starts the bridge on this host: the frozen exec-server if there is
    one (and HQ_FROZEN is not ``no``), else this Python."""
    frozen = os.path.join(environ.get("HQPATH", ""), *FROZEN_EXEC_SERVER)
    if environ.get("HQ_FROZEN") != "no" and os.path.isfile(frozen) and os.access(frozen, os.X_OK):
        return [frozen, "--bridge"]
    return [sys.executable, "-P", "-m", "hq.execd.main", "--bridge"]


def remote_bridge_argv(environ: Mapping[str, str]) -> list[str]:
    """The command that starts the bridge on another host (the same installation path there;
    HQPATH is not secret, and settings travel in the hello on stdin, never on this line)."""
    root = environ["HQPATH"]
    return ["env", f"HQPATH={root}", "sh", "-c", _REMOTE_CHOICE, "sh", root,
            environ.get("HQ_FROZEN", ""), sys.executable, "-P", "-m", "hq.execd.main", "--bridge"]


class ExecLink:
    """One bridge process to one host's exec-server, and the runs waiting to go through it."""

    def __init__(self, host: str, address: str, ssh_port: int, settings: ExecSettings,
                 ssh_options: dict[str, Any],
                 on_message: Callable[[ExecLink, Message], None],
                 on_lost: Callable[[ExecLink], None]) -> None:
        self.host, self.address, self.ssh_port = host, address, ssh_port
        self.settings, self.ssh_options = settings, ssh_options
        self.on_message, self.on_lost = on_message, on_lost
        self.channel: Channel | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.daemon_pid: int | None = None
        self.ready = asyncio.Event()
        self.queued: list[Message] = []   # runs and cancels held until the first sync is done
        self.attempts: dict[int, int] = {}   # job id -> the attempt last handed over
        self._settled = asyncio.Event()      # connect() has finished, one way or the other
        self.ssh: Any = None              # paramiko.SSHClient for a remote host
        self.connected = False            # connect() succeeded and the link has not been lost
        self.failure: str | None = None   # why connect() failed, in one line
        self._close_remote: Callable[[], None] | None = None

    @property
    def up(self) -> bool:
        return self.channel is not None and not self.channel.closed.is_set()

    async def _start_local(self) -> Channel:
        self.process = await asyncio.wait_for(asyncio.create_subprocess_exec(
            *local_bridge_argv(os.environ),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=dict(os.environ), limit=MAX_FRAME,
            start_new_session=True), SPAWN_TIMEOUT_S)
        assert self.process.stdout is not None and self.process.stdin is not None
        return Channel(self.process.stdout, self.process.stdin, f"exec-server on {self.host}",
                       accepts=EXECD_SENDS_USERD)

    async def _start_remote(self) -> Channel:
        from hq.auth import user_name
        from hq.ssh import SshTarget, open_remote_streams, open_ssh

        target = SshTarget(host=self.host, address=self.address, port=self.ssh_port,
                           user=user_name(os.geteuid()))
        self.ssh = await asyncio.to_thread(open_ssh, target, **self.ssh_options)
        # The same installation path on every host (shared filesystem); HQPATH is not secret,
        # and settings travel in the hello on stdin, never on this command line.
        argv = remote_bridge_argv(os.environ)
        reader, writer, self._close_remote = await open_remote_streams(self.ssh, argv,
                                                                        limit=MAX_FRAME)
        return Channel(reader, writer, f"exec-server on {self.host}",  # type: ignore[arg-type]
                       accepts=EXECD_SENDS_USERD)

    async def connect(self) -> SyncReply:
        """Start the bridge, say hello and return the exec-server's answer to ``sync``.

        An exec-server of protocol version 1 (left running by an upgrade, with its jobs) is
        spoken to in version 1: the bridge is started again and says hello in that version.
        Any failure is an Unavailable with one line (what ssh, the bridge or the exec-server
        said), so the caller can tell hq-server and put the jobs back in the queue.
        """
        try:
            for version in (PROTOCOL_VERSION, OLDEST_VERSION):
                try:
                    return await self._connect(version)
                except HqError as err:
                    if version > OLDEST_VERSION and is_version_refusal(err):
                        log.info("host %s: the exec-server there speaks protocol %d: "
                                 "adopting it in that version", self.host, OLDEST_VERSION)
                        continue
                    raise
            raise AssertionError("unreachable")
        except HqError as err:
            self.failure = str(err)
            raise
        finally:
            self._settled.set()

    async def _connect(self, version: int) -> SyncReply:
        try:
            if is_local(self.address):
                self.channel = await self._start_local()
            else:
                self.channel = await self._start_remote()
            self.channel.send(hello("userd", "hq-user-server", version=version,
                                    settings=self.settings))
            answer = await asyncio.wait_for(self.channel.receive_as(Welcome), SPAWN_TIMEOUT_S)
            if answer is None:
                raise Unavailable(f"exec-server bridge ended: {await self._stderr_tail()}")
            self.channel.version = answer.version
            self.daemon_pid = answer.pid
            serving = asyncio.create_task(self.channel.serve(
                lambda message: self.on_message(self, message)))
            serving.add_done_callback(lambda _t: self._lost())
            state = await self.sync()
        except HqError:
            self.close()
            raise
        except (TimeoutError, OSError) as err:
            self.close()
            raise Unavailable(f"exec-server did not answer: {err or type(err).__name__}"
                              ) from None
        except Exception as err:   # e.g. paramiko refusing a channel on a dying connection
            self.close()
            raise Unavailable(f"cannot start the exec-server: {type(err).__name__}: {err}"
                              ) from None
        self.connected = True
        log.info("host %s: exec-server pid %s connected (protocol %d)", self.host,
                 self.daemon_pid, self.channel.version)
        return state

    async def sync(self) -> SyncReply:
        """The exec-server's whole view of our jobs."""
        assert self.channel is not None
        return await self.channel.request(SyncRequest(), timeout=SPAWN_TIMEOUT_S)

    async def settled(self, timeout: float = 2 * SPAWN_TIMEOUT_S) -> None:
        """Wait until the link is ready (its first sync handled) or has failed."""
        ready = asyncio.ensure_future(self.ready.wait())
        done = asyncio.ensure_future(self._settled.wait())
        try:
            await asyncio.wait([ready, done], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            done.cancel()

    def renew_lease(self) -> None:
        if self.up and self.ready.is_set():
            self.channel.send(Lease())  # type: ignore[union-attr]

    async def _stderr_tail(self) -> str:
        if self.ssh is not None and self.channel is not None:
            remote = getattr(self.channel.writer, "remote", None)
            tail = bytes(getattr(remote, "stderr_tail", b"")).decode(errors="replace")
            return " ".join(tail.split())[-300:] or "no output"
        if self.process is None or self.process.stderr is None:
            return "no output"
        try:
            data = await asyncio.wait_for(self.process.stderr.read(4096), 2.0)
        except TimeoutError:
            data = b""
        text = " ".join(data.decode(errors="replace").split())
        return text[-300:] or "no output"

    def send(self, message: Message) -> None:
        old = self.channel is not None and self.channel.version < 2
        if isinstance(message, Withdraw) and old:
            return   # a protocol-1 exec-server keeps no queue: nothing waits there to withdraw
        if isinstance(message, Run) and (old or self.channel is None):
            for job in message.jobs:   # only a protocol-1 exec-server needs them
                self.attempts[job.id] = job.attempt
        if self.ready.is_set() and self.up:
            self.channel.send(message)  # type: ignore[union-attr]
        else:
            self.queued.append(message)

    def with_attempts(self, message: Any) -> Any:
        """An exec-server of protocol 1 knows no attempts: its reports are about the run
        this link handed it last (what hq-server compares with the job's attempt)."""
        if self.channel is None or self.channel.version >= 2:
            return message

        def fix(item: Any) -> Any:
            return msgspec.structs.replace(item, attempt=self.attempts.get(item.id, 0))

        if isinstance(message, JobEvents):
            return msgspec.structs.replace(message, events=[fix(e) for e in message.events])
        return msgspec.structs.replace(message, running=[fix(r) for r in message.running],
                                       ended=[fix(e) for e in message.ended])

    def flush_queue(self) -> None:
        self.ready.set()
        queued, self.queued = self.queued, []
        for message in queued:
            self.send(message)

    def _lost(self) -> None:
        self.close()
        if self.connected:   # a link that never came up is the connecting code's to report
            self.connected = False
            log.warning("host %s: link to exec-server lost", self.host)
            self.on_lost(self)

    def close(self) -> None:
        self.ready.clear()
        if self.channel is not None:
            self.channel.close()
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
        if self._close_remote is not None:
            self._close_remote()
            self._close_remote = None
        if self.ssh is not None:
            ssh, self.ssh = self.ssh, None
            # closing may wait on a dead peer: not on the loop
            asyncio.get_running_loop().run_in_executor(None, ssh.close)


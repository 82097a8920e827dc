"""ssh for the user-server (the only module that opens ssh): log in, check host keys, run.

It runs as the user: their keys (~/.ssh/id_*, agent) log them in; their ~/.ssh/known_hosts and
/etc/ssh/ssh_known_hosts vouch for hosts. A changed host key is never accepted, an unknown one
only with policy "accept-new". All but ``open_remote_streams`` block (call from a thread).
Commands are built with ``shlex.join``; settings go over stdin (the hello), never in argv.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shlex
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from paramiko.hostkeys import InvalidHostKey

from hq.errors import Unavailable

log = logging.getLogger(__name__)

SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
# A peer that acknowledges nothing for this long is gone: keepalives alone take minutes to
# notice a powered-off host; with this (and ssh keepalives to have data in flight), seconds.
TCP_USER_TIMEOUT_MS = 3000
KEEPALIVE_S = 2
STDERR_TAIL = 4096
CHUNK = 1 << 16


@dataclass(frozen=True)
class SshTarget:
    """Where to log in: hq's name for the host (for messages), its address and port, as whom."""

    host: str
    address: str
    port: int = 22
    user: str = ""       # login name; "" = this process's own account (the user-server's)

    def __post_init__(self) -> None:
        if not self.user:
            object.__setattr__(self, "user", pwd.getpwuid(os.geteuid()).pw_name)

    def __str__(self) -> str:
        return f"host {self.host} ({self.address})"


class HostKeyUnknown(Unavailable):
    """The host's key is in no known_hosts file and the policy does not accept new keys."""


class LoginFailed(Unavailable):
    """sshd refused every key of the user: a problem of this user's, not of the host."""


class HostKeyChanged(Unavailable):
    """The host's key differs from the known one: never accepted, whatever the policy."""


def _describe(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """paramiko calls this only for a host that no known_hosts file mentions."""

    def __init__(self, target: SshTarget, policy: str, known_hosts: Path) -> None:
        self.target, self.policy, self.known_hosts = target, policy, known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        t = self.target
        if self.policy != "accept-new":
            keytype = key.get_name().removeprefix("ssh-").split("-")[0]   # ssh-keyscan's -t
            port = f"-p {t.port} " if t.port != 22 else ""
            raise HostKeyUnknown(f"{t}: its ssh host key ({_describe(key)}) is not in your "
                                 "known_hosts; check it and add it, e.g. ssh-keyscan -t "
                                 f"{keytype} {port}{t.address} >> ~/.ssh/known_hosts")
        # One appended line: paramiko's save_host_keys rewrites the file and drops comments.
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.known_hosts, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            newline = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
            f.write(newline + f"{hostname} {key.get_name()} {key.get_base64()}\n".encode())
        log.warning("%s: added its ssh host key %s to %s (host_key_policy accept-new)",
                    t, _describe(key), self.known_hosts)


def _connect_socket(target: SshTarget, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((target.address, target.port), timeout=timeout)
    except TimeoutError:
        raise Unavailable(f"{target}: ssh connection timed out after {timeout:g} s "
                          "(host down or network cut?)") from None
    except ConnectionRefusedError:
        raise Unavailable(f"{target}: ssh connection refused on port {target.port} "
                          "(is sshd running there?)") from None
    except OSError as err:   # unreachable, unknown name, ...
        raise Unavailable(f"{target}: cannot connect: {err.strerror or err}") from None
    # Without TCP_NODELAY every small exchange waits ~45 ms (Nagle + delayed ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3),
                        ("TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_MS)):
        if hasattr(socket, name):   # Linux; elsewhere the ssh keepalive has to do
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    return sock


def open_ssh(target: SshTarget, *, policy: str = "reject", connect_timeout: float = 5.0,
             known_hosts_extra: Sequence[Path] = ()) -> paramiko.SSHClient:
    """Log in to ``target`` as its user, or raise ``Unavailable`` with one line saying why.

    ``connect_timeout`` bounds all of it: TCP connect, handshake, authentication. The caller
    closes the client."""
    if policy not in ("reject", "accept-new"):
        raise ValueError(f"unknown host key policy {policy!r} (use reject or accept-new)")
    user_known_hosts = Path.home() / ".ssh" / "known_hosts"
    hostname = target.address if target.port == 22 else f"[{target.address}]:{target.port}"
    client = paramiko.SSHClient()
    # One table for all files: no file hides another's key; paramiko asks for the type we know
    for path in (SYSTEM_KNOWN_HOSTS, user_known_hosts, *known_hosts_extra):
        try:
            client.load_system_host_keys(str(path))
        except FileNotFoundError:
            continue
        except (OSError, InvalidHostKey) as err:
            why = err.strerror if isinstance(err, OSError) else f"bad line {err.line[:40]}"
            raise Unavailable(f"{target}: cannot check its host key: {path}: {why}") from None
    client.set_missing_host_key_policy(_HostKeyPolicy(target, policy, user_known_hosts))
    sock = _connect_socket(target, connect_timeout)
    # paramiko has one timeout per phase (banner, key exchange, auth); this one bounds them
    # together: cutting the socket makes whatever phase is running fail at once.
    timed_out = threading.Event()
    watchdog = threading.Timer(connect_timeout, _cut, (sock, timed_out))
    watchdog.start()
    connected = False
    try:
        client.connect(target.address, port=target.port, username=target.user, sock=sock,
                       timeout=connect_timeout, banner_timeout=connect_timeout,
                       auth_timeout=connect_timeout, look_for_keys=True, allow_agent=True)
        connected = True
    except paramiko.BadHostKeyException as err:
        raise HostKeyChanged(
            f"{target}: its ssh host key has CHANGED (now {_describe(err.key)}, known_hosts "
            "has another): someone may be intercepting the connection; if the host was "
            f"reinstalled, check the new key and run ssh-keygen -R {hostname}"
        ) from None
    except paramiko.AuthenticationException:
        raise LoginFailed(f"{target}: ssh login as {target.user} failed: no key of yours was "
                          "accepted (is your public key in ~/.ssh/authorized_keys there?)"
                          ) from None
    except (paramiko.SSHException, OSError, EOFError) as err:
        why = f"timed out after {connect_timeout:g} s" if timed_out.is_set() else \
            f"failed: {err or type(err).__name__}"
        raise Unavailable(f"{target}: ssh handshake {why}") from None
    finally:   # HostKeyUnknown from the policy passes through here too
        watchdog.cancel()
        if not connected:
            client.close()
            sock.close()
    client.get_transport().set_keepalive(KEEPALIVE_S)   # type: ignore[union-attr]
    return client


def _cut(sock: socket.socket, timed_out: threading.Event) -> None:
    timed_out.set()
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


@dataclass
class RemoteProcess:
    """A command running at the far end of one ssh channel (its stdin, stdout and stderr)."""

    channel: paramiko.Channel
    command: str                     # exactly what the remote shell was given
    stderr_tail: bytearray = field(default_factory=bytearray)   # filled by drain_stderr

    def drain_stderr(self) -> None:
        """Keep the tail of stderr: left unread, it would fill the window and stall stdout."""
        while self.channel.recv_stderr_ready():
            self.stderr_tail += self.channel.recv_stderr(CHUNK)
            del self.stderr_tail[:-STDERR_TAIL]

    def exit_status(self, timeout: float | None = None) -> int | None:
        """The command's exit status, or None if it has not ended within ``timeout``."""
        return self.channel.exit_status if self.channel.status_event.wait(timeout) else None


def start_remote(client: paramiko.SSHClient, argv: Sequence[str], *,
                 timeout: float = 10.0) -> RemoteProcess:
    """Run ``argv`` on the client's host, quoted with ``shlex.join`` for the remote shell."""
    if not argv:
        raise ValueError("start_remote needs a command")
    transport = client.get_transport()
    try:
        if transport is None or not transport.is_active():
            raise paramiko.SSHException("the ssh connection is closed")
        channel = transport.open_session(timeout=timeout)
        channel.exec_command(shlex.join(argv))
    except (paramiko.SSHException, OSError, EOFError) as err:
        where = "ssh"
        with contextlib.suppress(OSError, AttributeError):   # the peer may be gone already
            where = f"ssh to {transport.getpeername()[0]}"   # type: ignore[union-attr]
        raise Unavailable(f"{where}: cannot start {argv[0]}: {err}") from None
    return RemoteProcess(channel, shlex.join(argv))


class ChannelWriter:
    """Channel stdin for ``hq.protocol.Channel``: one thread sends, in order (paramiko may block
    on the ssh window). ``drain`` waits until all written is sent; raises if sending failed."""

    def __init__(self, remote: RemoteProcess) -> None:
        self.remote = remote
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="ssh-send")
        self._last: Future[None] | None = None
        self._closing = False

    def write(self, data: bytes) -> None:
        if not self._closing:   # after close, as with an asyncio transport, data goes nowhere
            self._last = self._sender.submit(self.remote.channel.sendall, bytes(data))

    async def drain(self) -> None:
        if self._last is not None:
            await asyncio.wrap_future(self._last)

    def is_closing(self) -> bool:
        return self._closing or self.remote.channel.closed

    def close(self, abort: bool = False) -> None:
        """Send what is queued, then EOF (the remote stdin ends); ``abort``: drop it."""
        if not self._closing:
            self._closing = True
            if not abort:
                self._sender.submit(self.remote.channel.shutdown_write)
            self._sender.shutdown(wait=False, cancel_futures=abort)


class _ChannelReading:
    """Channel stdout -> StreamReader, on the loop: paramiko signals data and EOF through a
    pipe (``Channel.fileno``); as the reader's transport, we are paused when it is full."""

    def __init__(self, remote: RemoteProcess, reader: asyncio.StreamReader,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.remote, self.reader, self.loop = remote, reader, loop
        self.fd = remote.channel.fileno()
        self.watching = self.done = False
        reader.set_transport(self)   # type: ignore[arg-type]
        self.resume_reading()

    def pause_reading(self, stop: bool = False) -> None:
        if self.watching:
            self.loop.remove_reader(self.fd)
        self.watching, self.done = False, self.done or stop

    def resume_reading(self) -> None:
        if not self.watching and not self.done:
            self.loop.add_reader(self.fd, self._readable)
            self.watching = True

    def _readable(self) -> None:
        channel = self.remote.channel
        self.remote.drain_stderr()
        if channel.recv_ready():
            self.reader.feed_data(channel.recv(CHUNK))
        elif channel.eof_received or channel.closed:
            while data := channel.recv(CHUNK):   # closed buffers: returns at once, b"" at end
                self.reader.feed_data(data)
            self.remote.drain_stderr()
            self.pause_reading(stop=True)
            self.reader.feed_eof()


async def open_remote_streams(client: paramiko.SSHClient, argv: Sequence[str], *,
                              limit: int = 1 << 16,
                              ) -> tuple[asyncio.StreamReader, ChannelWriter, Callable[[], None]]:
    """Start ``argv`` remotely: (stdout reader, stdin writer, close()) as
    ``hq.protocol.Channel(reader, writer, name)`` takes them; call close on the loop.
    ``writer.remote`` has the stderr tail and the exit status."""
    loop = asyncio.get_running_loop()
    remote = await asyncio.to_thread(start_remote, client, argv)
    reader = asyncio.StreamReader(limit=limit)
    reading = _ChannelReading(remote, reader, loop)
    writer = ChannelWriter(remote)

    def close() -> None:
        reading.pause_reading(stop=True)   # first: closing the channel closes its pipe
        writer.close(abort=True)
        remote.channel.close()
        reader.feed_eof()

    return reader, writer, close

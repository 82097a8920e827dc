"""The one wire format every hq process speaks: framing, handshake, requests and errors.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON holding one
object with a ``type``. Frames larger than MAX_FRAME are refused (the peer is cut off). No
pickle, nothing executable: a message is data.

Every connection starts with the client's ``hello`` (protocol version, role, program) and the
server's ``welcome`` (or an ``error`` with code ``version``). After that a request carries a
``rid`` and gets exactly one ``reply`` or ``error`` with the same ``rid``; a message without a
``rid`` is a notification and gets no answer. The message types and their fields are listed
in doc/protocol.md.

Two front ends over the same framing: ``Channel`` (asyncio, for the daemons) and
``BlockingClient`` (a plain socket, for the command line programs, which must start fast).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hq.errors import ERRORS_BY_CODE, HqError, Unavailable, UsageError

PROTOCOL_VERSION = 1
MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")

if TYPE_CHECKING:
    import asyncio

Message = dict[str, Any]


class ProtocolError(HqError):
    """The peer broke the protocol (bad frame, bad JSON, wrong version); the link is dropped."""

    code = "protocol"


def encode(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_FRAME:
        raise UsageError(f"message of {len(body)} bytes exceeds the limit of {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def decode(body: bytes) -> Message:
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"malformed message: {err}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("malformed message: not an object with a 'type'")
    return message


def check_frame_length(length: int) -> None:
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {MAX_FRAME}")


def error_message(err: HqError, rid: int | None = None) -> Message:
    message: Message = {"type": "error", "code": err.code, "message": err.message}
    if rid is not None:
        message["rid"] = rid
    return message


def raise_for_error(message: Message) -> Message:
    """Return ``message`` unless it is an error, which is raised as the matching HqError."""
    if message.get("type") != "error":
        return message
    cls = ERRORS_BY_CODE.get(message.get("code", ""), HqError)
    text = str(message.get("message", "unknown error"))
    err = cls.__new__(cls)
    HqError.__init__(err, text)
    raise err


def hello(role: str, program: str) -> Message:
    return {"type": "hello", "version": PROTOCOL_VERSION, "role": role, "program": program}


def check_hello(message: Message, roles: set[str]) -> str:
    """Validate a client's hello; return its role."""
    if message.get("type") != "hello":
        raise ProtocolError(f"expected hello, got {message.get('type')!r}")
    if message.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {message.get('version')!r} is not supported "
                            f"(this side speaks {PROTOCOL_VERSION}): use one hq version "
                            "everywhere")
    role = message.get("role")
    if role not in roles:
        raise ProtocolError(f"role {role!r} is not served here")
    return str(role)


# --- peer credentials -----------------------------------------------------------------------

@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


_UCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Who is at the other end of a Unix socket, as the kernel attests (SO_PEERCRED)."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _UCRED.size))
    return PeerCredentials(pid, uid, gid)


# --- asyncio side (daemons) -----------------------------------------------------------------

class Channel:
    """A framed, bidirectional message link over asyncio streams.

    ``request`` sends a message with a fresh ``rid`` and waits for its answer; everything else
    that arrives is passed to the ``on_message`` callback given to ``serve``.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 name: str) -> None:
        import asyncio  # here, not at the top: command line programs never need it

        self.reader, self.writer, self.name = reader, writer, name
        self._next_rid = 1
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self.closed = asyncio.Event()

    async def receive(self) -> Message | None:
        """The next message, or None at a clean end of stream."""
        import asyncio

        try:
            header = await self.reader.readexactly(_HEADER.size)
        except asyncio.IncompleteReadError as err:
            if err.partial:
                raise ProtocolError(f"{self.name}: stream ended inside a frame header") from None
            return None
        (length,) = _HEADER.unpack(header)
        check_frame_length(length)
        try:
            body = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise ProtocolError(f"{self.name}: stream ended inside a frame") from None
        return decode(body)

    def send(self, message: Message) -> None:
        """Queue a message; never blocks (call ``drain`` where back-pressure matters)."""
        if not self.writer.is_closing():
            self.writer.write(encode(message))

    async def drain(self) -> None:
        await self.writer.drain()

    async def request(self, message: Message, timeout: float | None = None) -> Message:
        import asyncio

        rid = self._next_rid
        self._next_rid += 1
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        self.send({**message, "rid": rid})
        try:
            return raise_for_error(await asyncio.wait_for(future, timeout))
        finally:
            self._waiting.pop(rid, None)

    def reply(self, request: Message, **fields: Any) -> None:
        self.send({"type": "reply", "rid": request.get("rid"), **fields})

    def reply_error(self, request: Message, err: HqError) -> None:
        self.send(error_message(err, request.get("rid")))

    async def serve(self, on_message: Callable[[Message], Awaitable[None] | None]) -> None:
        """Read until the peer goes away; answers to our requests resolve their futures."""
        import asyncio

        try:
            while (message := await self.receive()) is not None:
                rid = message.get("rid")
                if message["type"] in ("reply", "error") and rid in self._waiting:
                    future = self._waiting.pop(rid)
                    if not future.done():
                        future.set_result(message)
                    continue
                result = on_message(message)
                if asyncio.iscoroutine(result):
                    await result
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(Unavailable(f"{self.name}: connection lost"))
        self._waiting.clear()
        if not self.writer.is_closing():
            self.writer.close()
        self.closed.set()


async def open_unix_channel(path: str, name: str, role: str, program: str, *,
                            expect_uid: int | None = None) -> tuple[Channel, Message]:
    """Connect to a daemon's Unix socket, check who listens there (when ``expect_uid`` is
    given) before sending anything, and do the handshake; return the channel and welcome."""
    import asyncio

    reader, writer = await asyncio.open_unix_connection(path, limit=MAX_FRAME)
    if expect_uid is not None:
        peer = peer_credentials(writer.get_extra_info("socket"))
        if peer.uid != expect_uid:
            writer.close()
            raise Unavailable(f"{name} at {path} runs as uid {peer.uid}, expected uid "
                              f"{expect_uid}: refusing to talk to it")
    channel = Channel(reader, writer, name)
    channel.send(hello(role, program))
    welcome = await channel.receive()
    if welcome is None:
        raise Unavailable(f"{name}: closed the connection during the handshake")
    raise_for_error(welcome)
    return channel, welcome


# --- blocking side (command line programs) --------------------------------------------------

class BlockingClient:
    """A synchronous request/reply client over a Unix socket, for short-lived programs."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock, self.name = sock, name
        self._next_rid = 1
        self._buffer = b""

    @classmethod
    def connect(cls, path: str, name: str, *, role: str, program: str,
                expect_uid: int | None = None, timeout: float = 30.0,
                ) -> tuple[BlockingClient, Message]:
        """Connect, check the peer's uid (when given) before sending anything, handshake."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        if expect_uid is not None:
            peer = peer_credentials(sock)
            if peer.uid != expect_uid:
                sock.close()
                raise Unavailable(f"{name} at {path} runs as uid {peer.uid}, expected uid "
                                  f"{expect_uid}: refusing to talk to it")
        client = cls(sock, name)
        client._send(hello(role, program))
        welcome = raise_for_error(client._receive())
        return client, welcome

    def _send(self, message: Message) -> None:
        self.sock.sendall(encode(message))

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self._buffer)))
            except TimeoutError:
                raise Unavailable(f"{self.name}: no answer within "
                                  f"{self.sock.gettimeout():.0f} s") from None
            if not chunk:
                raise Unavailable(f"{self.name}: connection closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _receive(self) -> Message:
        (length,) = _HEADER.unpack(self._read_exactly(_HEADER.size))
        check_frame_length(length)
        return decode(self._read_exactly(length))

    def request(self, message: Message, timeout: float | None = None) -> Message:
        """Send one request and return its reply; an error reply is raised as HqError."""
        rid = self._next_rid
        self._next_rid += 1
        if timeout is not None:
            self.sock.settimeout(timeout)
        self._send({**message, "rid": rid})
        while True:
            answer = self._receive()
            if answer.get("rid") == rid:
                return raise_for_error(answer)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def socket_is_live(path: str | os.PathLike[str]) -> bool:
    """True when something accepts connections on the Unix socket at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        sock.connect(os.fspath(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def relay_stdio(sock: socket.socket, chunk: int = 65536) -> None:
    """Copy stdin -> ``sock`` (a thread) and ``sock`` -> stdout (here) until either side ends.

    The far end of an stdio tunnel (the exec-server bridge, the ssh relay to a user-server):
    raw fds and no re-framing, so bytes go on the moment they arrive, in whatever chunks.
    """
    import contextlib
    import threading

    def upstream() -> None:
        with contextlib.suppress(OSError):
            while data := os.read(0, chunk):
                sock.sendall(data)
        # Wakes the reader below, which then ends the relay.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=upstream, name="stdin->socket", daemon=True).start()
    try:
        while data := sock.recv(chunk):
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
    except OSError:
        pass  # the other side went away (EPIPE) or the socket was reset: we are done
    finally:
        sock.close()

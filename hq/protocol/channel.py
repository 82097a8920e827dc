"""Links that carry frames: the asyncio ``Channel`` of the daemons and the ``BlockingClient``
of the command line programs, plus the handshake both start with.

Every connection starts with the connecting side's ``Hello`` and the other side's ``Welcome``
(or an ``Error``). The version spoken is the lower of the two sides' versions, down to
``OLDEST_VERSION``: a daemon left running by an upgrade keeps working with new ones. A client
whose hello a version-1 daemon refuses says hello again in version 1 (``connect_versions``).
After that a ``Request`` carries a ``rid`` and gets exactly one reply or ``Error`` with the
same ``rid``; anything else is a notification.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from hq.errors import Busy, HqError, ProtocolError, Unavailable
from hq.protocol.frames import (
    HEADER,
    MAX_FRAME,
    OLDEST_VERSION,
    PROTOCOL_VERSION,
    Decoder,
    check_frame_length,
    decode_as,
    encode,
    error_from,
    error_message,
    printable,
    rid_of,
)
from hq.protocol.messages import (
    Error,
    ExecSettings,
    Hello,
    Message,
    Reply,
    ReplyHeader,
    Request,
    Welcome,
)

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

BUSY_RETRY_S = 30.0


# --- handshake ---------------------------------------------------------------------------------

def hello(role: str, program: str, *, version: int = PROTOCOL_VERSION,
          settings: ExecSettings | None = None) -> Hello:
    return Hello(version=version, role=role, program=program[:64],  # type: ignore[arg-type]
                 settings=settings)


def check_hello(message: Hello, roles: set[str]) -> int:
    """Check a client's hello against the ``roles`` served here; the version to speak."""
    if message.version < OLDEST_VERSION:
        raise ProtocolError(f"protocol version {message.version} is not supported (this side "
                            f"speaks {OLDEST_VERSION} to {PROTOCOL_VERSION}): use one hq "
                            "version everywhere")
    if message.role not in roles:
        raise ProtocolError(f"role {message.role!r} is not served here")
    return min(message.version, PROTOCOL_VERSION)


def welcome(version: int, **fields: Any) -> Welcome:
    """The one way a daemon answers a hello it accepted (``version`` from ``check_hello``)."""
    return Welcome(version=version, **fields)


def is_version_refusal(err: HqError) -> bool:
    """Whether ``err`` is an older daemon refusing our hello's version (then say it in its)."""
    return err.code == "protocol" and "protocol version" in err.message


# --- peer credentials --------------------------------------------------------------------------

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


# --- asyncio side (daemons) --------------------------------------------------------------------

class Channel:
    """A framed, bidirectional link over asyncio streams.

    ``accepts`` is the union of message kinds the peer may send (``hq.protocol.messages``);
    ``request`` sends a request with a fresh ``rid`` and waits for its typed reply; everything
    else that arrives goes to the ``on_message`` callback given to ``serve``.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 name: str, *, accepts: Any = None, max_frame: int = MAX_FRAME) -> None:
        import asyncio  # here, not at the top: command line programs never need it

        self.reader, self.writer, self.name = reader, writer, name
        self.max_frame = max_frame
        self.version = PROTOCOL_VERSION   # what the handshake agreed on
        self._decoder: Decoder | None = None
        if accepts is not None:
            self.accept(accepts)
        self._next_rid = 1
        self._waiting: dict[int, tuple[asyncio.Future[Any], Any]] = {}
        self.closed = asyncio.Event()

    def accept(self, kinds: Any) -> None:
        """From now on the peer may send ``kinds`` (set once its role is known)."""
        self._decoder = Decoder(kinds | Error | ReplyHeader)

    async def read_frame(self) -> bytes | None:
        """The next frame's body, or None at a clean end of stream."""
        import asyncio

        try:
            header = await self.reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError as err:
            if err.partial:
                raise ProtocolError(f"{self.name}: stream ended inside a frame header") from None
            return None
        (length,) = HEADER.unpack(header)
        check_frame_length(length, self.max_frame)
        try:
            return await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise ProtocolError(f"{self.name}: stream ended inside a frame") from None

    async def receive_as(self, kind: Any) -> Any:
        """The next message decoded as ``kind`` (the handshake); an ``Error`` is raised."""
        body = await self.read_frame()
        if body is None:
            return None
        message = decode_as(kind | Error, body)
        if isinstance(message, Error):
            raise error_from(message)
        return message

    def send(self, message: Message) -> None:
        """Queue a message; never blocks (call ``drain`` where back-pressure matters)."""
        if not self.writer.is_closing():
            self.writer.write(encode(message, self.max_frame))

    async def drain(self) -> None:
        await self.writer.drain()

    async def request(self, request: Request, timeout: float | None = None,
                      reply_type: Any = None) -> Any:
        """Send ``request`` and return its reply, decoded as its ``reply_type`` (or the one
        given); an ``Error`` answer is raised as the matching HqError."""
        import asyncio

        kind = reply_type or type(request).reply_type
        assert kind is not None, f"{type(request).__name__}: say which reply to expect"
        rid = self._next_rid
        self._next_rid += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = (future, kind)
        self.send(msgspec.structs.replace(request, rid=rid))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(rid, None)

    def reply(self, request: Request, reply: Reply) -> None:
        self.send(msgspec.structs.replace(reply, rid=request.rid))

    def reply_error(self, request: Request, err: HqError) -> None:
        self.send(error_message(err, request.rid))

    async def serve(self, on_message: Callable[[Any], Awaitable[None] | None]) -> None:
        """Read until the peer goes away; answers to our requests resolve their futures.

        A frame that breaks the protocol gets an ``Error`` (with its rid, when it has one)
        and ends the link: a peer that sends garbage is a bug or an attack either way.
        """
        import asyncio

        assert self._decoder is not None, "accept() the peer's message kinds first"
        try:
            while (body := await self.read_frame()) is not None:
                try:
                    message = self._decoder.decode(body)
                except ProtocolError as err:
                    self.send(error_message(err, rid_of(body)))
                    log.warning("%s: dropped: %s", self.name, printable(err))
                    return
                if isinstance(message, ReplyHeader | Error):
                    self._answered(message, body)
                    continue
                result = on_message(message)
                if asyncio.iscoroutine(result):
                    await result
        except ProtocolError as err:
            log.warning("%s: dropped: %s", self.name, printable(err))
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    def _answered(self, message: ReplyHeader | Error, body: bytes) -> None:
        waiting = self._waiting.pop(message.rid, None) if message.rid is not None else None
        if waiting is None:
            if isinstance(message, Error):
                log.warning("%s: says: %s", self.name, printable(message.message))
            return   # an answer nobody waits for any more (timed out)
        future, kind = waiting
        if future.done():
            return
        if isinstance(message, Error):
            future.set_exception(error_from(message))
            return
        try:
            future.set_result(decode_as(kind, body))
        except ProtocolError as err:
            future.set_exception(err)

    def close(self) -> None:
        for future, _kind in self._waiting.values():
            if not future.done():
                future.set_exception(Unavailable(f"{self.name}: connection lost"))
        self._waiting.clear()
        if not self.writer.is_closing():
            self.writer.close()
        self.closed.set()


async def open_unix_channel(path: str, name: str, role: str, program: str, *, accepts: Any,
                            expect_uid: int | None = None) -> tuple[Channel, Welcome]:
    """Connect to a daemon's Unix socket, check who listens there (when ``expect_uid`` is
    given) before sending anything, and do the handshake; return the channel and welcome.
    A version-1 daemon that refuses our hello is asked again in version 1."""
    import asyncio

    for version in (PROTOCOL_VERSION, OLDEST_VERSION):
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_FRAME)
        if expect_uid is not None:
            peer = peer_credentials(writer.get_extra_info("socket"))
            if peer.uid != expect_uid:
                writer.close()
                raise Unavailable(f"{name} at {path} runs as uid {peer.uid}, expected uid "
                                  f"{expect_uid}: refusing to talk to it")
        channel = Channel(reader, writer, name, accepts=accepts)
        channel.send(hello(role, program, version=version))
        try:
            answer = await channel.receive_as(Welcome)
        except HqError as err:
            channel.close()
            if version > OLDEST_VERSION and is_version_refusal(err):
                continue
            raise
        if answer is None:
            channel.close()
            raise Unavailable(f"{name}: closed the connection during the handshake")
        channel.version = answer.version
        return channel, answer
    raise AssertionError("unreachable")


# --- blocking side (command line programs) -----------------------------------------------------

class BlockingClient:
    """A synchronous request/reply client over a Unix socket, for short-lived programs."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock, self.name = sock, name
        self.version = PROTOCOL_VERSION
        self._next_rid = 1
        self._buffer = b""

    @classmethod
    def connect(cls, path: str, name: str, *, role: str, program: str,
                expect_uid: int | None = None, timeout: float = 30.0,
                ) -> tuple[BlockingClient, Welcome]:
        """Connect, check the peer's uid (when given) before sending anything, handshake; a
        version-1 daemon that refuses our hello is asked again in version 1."""
        for version in (PROTOCOL_VERSION, OLDEST_VERSION):
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
            try:
                answer = client.handshake(hello(role, program, version=version))
            except HqError as err:
                client.close()
                if version > OLDEST_VERSION and is_version_refusal(err):
                    continue
                raise
            return client, answer
        raise AssertionError("unreachable")

    def handshake(self, message: Hello) -> Welcome:
        self.send(message)
        answer = decode_as(Welcome | Error, self._receive())
        if isinstance(answer, Error):
            raise error_from(answer)
        self.version = answer.version
        return answer

    def send(self, message: Message | dict[str, Any]) -> None:
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

    def _receive(self) -> bytes:
        (length,) = HEADER.unpack(self._read_exactly(HEADER.size))
        check_frame_length(length)
        return self._read_exactly(length)

    def request(self, request: Request, timeout: float | None = None,
                reply_type: Any = None) -> Any:
        """Send one request and return its typed reply; an error reply is raised as HqError.

        A ``busy`` answer (the caller's request rate is over its limit) is asked again after
        a growing pause, for up to BUSY_RETRY_S."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        pause, give_up = 0.05, time.monotonic() + BUSY_RETRY_S
        while True:
            try:
                body = self._answer_to(msgspec.structs.replace(request, rid=self._next_rid))
            except Busy:
                if time.monotonic() + pause > give_up:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            return decode_as(reply_type or type(request).reply_type, body)

    def legacy_admin(self, request: Request, command: str, args: list[str]) -> Any:
        """``request`` put to an hq-server of protocol version 1, which took every admin
        request as ``{"type": "admin", "command": ..., "args": [...]}`` and answered
        ``{"result": {...}}``; the result is decoded as ``request``'s reply."""
        rid = self._next_rid
        body = self._answer_to({"type": "admin", "command": command, "args": args, "rid": rid})
        result = msgspec.json.decode(body, type=_LegacyAdminReply).result
        return msgspec.convert({**result, "type": "reply", "rid": rid},
                               type(request).reply_type)

    def _answer_to(self, request: Message | dict[str, Any]) -> bytes:
        """Send ``request`` (its rid is the next one) and return the body of its reply."""
        rid = self._next_rid
        self._next_rid += 1
        self.send(request)
        while True:
            body = self._receive()
            answer = decode_as(ReplyHeader | Error, body)
            if answer.rid != rid:
                continue
            if isinstance(answer, Error):
                raise error_from(answer)
            return body

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class _LegacyAdminReply(msgspec.Struct):
    result: dict[str, Any]


# --- plain sockets ------------------------------------------------------------------------------

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

"""Frames: a 4-byte big-endian length, then that many bytes of UTF-8 JSON holding one message.

One encoder and one decoder per set of message kinds (``Decoder``), both msgspec: decoding
checks every field against ``hq.protocol.messages`` and turns anything wrong into a
``ProtocolError`` with one line that says where. A frame longer than its cap is refused before
it is read. No pickle, nothing executable: a message is data.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from hq.errors import ERRORS_BY_CODE, HqError, ProtocolError, UsageError
from hq.protocol.messages import Error, Message

PROTOCOL_VERSION = 2
# The oldest version still spoken, to daemons an upgrade left running (DESIGN §6).
OLDEST_VERSION = 1
MAX_FRAME = 64 * 1024 * 1024
HEADER = struct.Struct(">I")

_encoder = msgspec.json.Encoder()


def encode(message: Message | dict[str, Any], max_frame: int = MAX_FRAME) -> bytes:
    """The frame of ``message`` (a message kind, or a plain object for tests and tools)."""
    try:
        body = _encoder.encode(message)
    except UnicodeEncodeError:
        raise UsageError("the message holds text that is not valid UTF-8") from None
    if len(body) > max_frame:
        raise UsageError(f"message of {len(body)} bytes exceeds the limit of {max_frame}")
    return HEADER.pack(len(body)) + body


def check_frame_length(length: int, max_frame: int = MAX_FRAME) -> None:
    if length > max_frame:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {max_frame}")


class _RidOnly(msgspec.Struct, forbid_unknown_fields=False):
    rid: int | None = None


def rid_of(body: bytes) -> int | None:
    """The ``rid`` of a frame that could not be decoded, if it has a usable one."""
    try:
        rid = msgspec.json.decode(body, type=_RidOnly).rid
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None   # RecursionError: skipping a field nested thousands deep
    return rid if rid is not None and 0 <= rid <= 2**53 else None


class Decoder:
    """Decodes frames into the message kinds of ``kinds`` (a class or a union of classes)."""

    def __init__(self, kinds: Any) -> None:
        self._decoder = msgspec.json.Decoder(kinds)

    def decode(self, body: bytes) -> Any:
        try:
            return self._decoder.decode(body)
        except msgspec.ValidationError as err:
            raise ProtocolError(f"bad message: {err}") from None
        except msgspec.DecodeError as err:
            raise ProtocolError(f"malformed message: {err}") from None
        except UnicodeDecodeError as err:
            raise ProtocolError(f"malformed message: not UTF-8 at byte {err.start}") from None
        except RecursionError:
            raise ProtocolError("malformed message: nested too deep") from None


_decoders: dict[Any, Decoder] = {}


def decode_as(kind: Any, body: bytes) -> Any:
    """``body`` decoded as ``kind`` (decoders are made once per kind)."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = Decoder(kind)
    return decoder.decode(body)


def printable(text: object, limit: int = 200) -> str:
    """Text a peer sent, fit for a log line: quoted and escaped (a newline in it cannot
    forge a line), and cut at ``limit`` characters (a peer cannot fill the log)."""
    shown = repr(str(text))
    return shown if len(shown) <= limit else shown[:limit] + f"... ({len(shown)} chars)"


def error_message(err: HqError, rid: int | None = None) -> Error:
    """The ``Error`` a daemon answers ``err`` with (one line, code for the client's class)."""
    text = " ".join(str(err).split())[:4000]
    return Error(code=err.code, message=text, rid=rid)


def error_from(message: Error) -> HqError:
    """The HqError an ``Error`` stands for, to raise on the requesting side."""
    cls = ERRORS_BY_CODE.get(message.code, HqError)
    err = cls.__new__(cls)
    HqError.__init__(err, message.message)
    return err

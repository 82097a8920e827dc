"""The one wire format every hq process speaks.

- ``hq.protocol.messages``: every message kind, typed and range-checked, and who sends it;
  this is the file to read for "what is in a ``run`` message".
- ``hq.protocol.frames``: framing (4-byte length + UTF-8 JSON), encoding, decoding, errors.
- ``hq.protocol.channel``: the handshake, the asyncio ``Channel`` of the daemons and the
  ``BlockingClient`` of the command line programs, peer credentials, stdio relays.

doc/protocol.md describes the same for people; a test checks that it names every kind.
"""

from hq.errors import ProtocolError
from hq.protocol.channel import (
    BlockingClient,
    Channel,
    PeerCredentials,
    check_hello,
    hello,
    open_unix_channel,
    peer_credentials,
    relay_stdio,
    socket_is_live,
    welcome,
)
from hq.protocol.frames import (
    MAX_FRAME,
    OLDEST_VERSION,
    PROTOCOL_VERSION,
    decode_as,
    encode,
    error_from,
    error_message,
)

__all__ = [
    "MAX_FRAME", "OLDEST_VERSION", "PROTOCOL_VERSION", "BlockingClient", "Channel",
    "PeerCredentials", "ProtocolError", "check_hello", "decode_as", "encode", "error_from",
    "error_message", "hello", "open_unix_channel", "peer_credentials", "relay_stdio",
    "socket_is_live", "welcome",
]

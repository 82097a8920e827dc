"""Commands inside a job (``hq-submit``, ``hq-client`` run by the job): the exec-server passes
their requests to the user-server that controls it, and the answers back.

A job's commands reach the user-server through the exec-server's socket (``HQ_EXECD_SOCKET``
in their environment), wherever the job runs; the exec-server's link to the user-server
carries them as ``relay`` messages (doc/protocol.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec

from hq.errors import HqError, Unavailable
from hq.protocol import Channel
from hq.protocol.messages import CLI_SENDS, Relay, Request

log = logging.getLogger(__name__)

RELAY_TIMEOUT_S = 120.0  # a command inside a job waiting on hq-server (e.g. hq-client wait)


async def serve_command(channel: Channel, controller: Callable[[], Channel | None],
                        hostname: str, welcome: Any) -> None:
    """Serve one command's connection until it closes; ``controller()`` is the link to the
    user-server now (None: none is connected, the command is told so)."""
    channel.accept(CLI_SENDS)
    channel.send(welcome)
    log.info("exec-server %s: relaying for a command inside a job", hostname)

    async def relay(request: Request) -> None:
        link = controller()
        if link is None:
            channel.reply_error(request, Unavailable(
                f"no user-server is connected to the exec-server on {hostname}"))
            return
        try:
            answer = await link.request(
                Relay(request=msgspec.structs.replace(request, rid=None)),
                timeout=RELAY_TIMEOUT_S, reply_type=type(request).reply_type)
        except HqError as err:
            channel.reply_error(request, err)
        except TimeoutError:
            channel.reply_error(request, Unavailable("the user-server did not answer"))
        else:
            channel.reply(request, answer)

    await channel.serve(relay)

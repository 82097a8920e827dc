"""hq.cli.relay: the far end of ``hq.cli.remote_link``, run over ssh on hq-server's host.

Starts the user's user-server there if needed, then copies bytes between its own stdin/stdout
(the ssh channel) and the user-server's socket, unchanged, until either side closes. Not a
command for people; it has no options.
"""

from __future__ import annotations

import os
import socket
import sys


def main() -> None:
    """Entry point (``python -m hq.cli.relay``)."""
    from hq.cli.userd_link import ensure_user_server
    from hq.config import Installation
    from hq.errors import HqError
    from hq.protocol import peer_credentials, relay_stdio

    try:
        path = ensure_user_server(Installation.locate())
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        if peer_credentials(sock).uid != os.geteuid():
            raise HqError(f"{path} is not served by your own user-server")
    except (HqError, OSError) as err:
        sys.stderr.write(f"hq relay: error: {err}\n")
        sys.exit(5)
    relay_stdio(sock)


if __name__ == "__main__":
    main()

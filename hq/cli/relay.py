"""hq.cli.relay: the far end of ``hq.cli.remote_link``, run over ssh on hq-server's host.

Starts the user's user-server there if needed, then copies bytes between its own stdin/stdout
(the ssh channel) and the user-server's socket, unchanged, until either side closes. Not a
command for people; it has no options.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys


def main() -> None:
    """Entry point (``python -m hq.cli.relay``)."""
    from hq.cli.userd_link import ensure_user_server
    from hq.config import Installation
    from hq.errors import HqError
    from hq.protocol import peer_credentials

    try:
        path = ensure_user_server(Installation.locate())
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        if peer_credentials(sock).uid != os.geteuid():
            raise HqError(f"{path} is not served by your own user-server")
    except (HqError, OSError) as err:
        sys.stderr.write(f"hq relay: error: {err}\n")
        sys.exit(5)
    copy_both_ways(sys.stdin.fileno(), sys.stdout.fileno(), sock)


def copy_both_ways(fd_in: int, fd_out: int, sock: socket.socket) -> None:
    selector = selectors.DefaultSelector()
    selector.register(fd_in, selectors.EVENT_READ, "in")
    selector.register(sock, selectors.EVENT_READ, "sock")
    while True:
        for key, _ in selector.select():
            if key.data == "in":
                data = os.read(fd_in, 65536)
                if not data:
                    return
                sock.sendall(data)
            else:
                data = sock.recv(65536)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    view = view[os.write(fd_out, view):]


if __name__ == "__main__":
    main()

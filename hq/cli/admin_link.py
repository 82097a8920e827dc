"""The link from hq-admin straight to hq-server (role ``admin``).

hq-admin checks that the process behind the socket runs as the account hq-server should run
as (``server_user`` in etc/hq-server.cfg, else the owner of the installation) before sending
anything; hq-server in turn checks the caller's ``admin`` role from etc/users.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hq.errors import Unavailable

if TYPE_CHECKING:
    from hq.config import Installation
    from hq.protocol import BlockingClient

_NAME = "hq-server"


def connect_server(inst: Installation, program: str) -> BlockingClient:
    """A handshaken admin link to hq-server; Unavailable when it is not running."""
    from hq.auth import server_uid
    from hq.config import load_server
    from hq.protocol import BlockingClient

    config = load_server(inst)
    path = config.socket_path
    try:
        client, _welcome = BlockingClient.connect(str(path), _NAME, role="admin",
                                                  program=program,
                                                  expect_uid=server_uid(inst, config))
    except (FileNotFoundError, ConnectionRefusedError):
        raise Unavailable(f"{_NAME} is not running (no answer on {path}): start it with "
                          "'hq-server --daemon'") from None
    except OSError as err:
        raise Unavailable(f"cannot reach {_NAME} at {path}: {err.strerror or err}") from None
    return client

"""Reaching your user-server from a host other than hq-server's: ssh there, run the relay.

The link is the user's own OpenSSH client (their keys, agent, known_hosts and ssh config),
started with one end of a socket pair as its stdin and stdout; ``hq.cli.relay`` on the other
side copies frames to the user-server there. The command line is fixed and built with
``shlex.join``; everything the request carries (environment, directory) travels inside it.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

from hq.errors import Unavailable

if TYPE_CHECKING:
    from hq.config import Installation
    from hq.protocol import BlockingClient

SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
               "-T"]


def connect_over_ssh(inst: Installation, address: str, program: str) -> BlockingClient:
    from hq.protocol import BlockingClient, hello

    remote = shlex.join(["env", f"HQPATH={inst.root}", sys.executable, "-P", "-m",
                         "hq.cli.relay"])
    ours, theirs = socket.socketpair()
    try:
        subprocess.Popen(["ssh", *SSH_OPTIONS, address, remote], stdin=theirs, stdout=theirs,
                         start_new_session=True)
    except OSError as err:
        ours.close()
        raise Unavailable(f"cannot run ssh to reach hq-server's host {address}: "
                          f"{err.strerror}") from None
    finally:
        theirs.close()
    ours.settimeout(60)
    client = BlockingClient(ours, f"hq-user-server on {address} (via ssh)")
    try:
        client.handshake(hello("cli", program))
    except Unavailable as err:
        client.close()
        raise Unavailable(f"{err} (ssh to {address} failed? try: ssh {address} true)") from None
    return client

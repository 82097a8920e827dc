"""hq-user-server: start (normally by hq-submit or hq-client, not by hand) and wiring.

``hq-user-server --daemon`` returns 0 once the socket in the user's runtime directory accepts
connections (or another user-server of the same user already does), else a one-line reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

import click

from hq.auth import runtime_dir, server_uid, state_dir
from hq.config import Installation, load_server
from hq.daemon import Ready, run_daemon
from hq.program import CONTEXT_SETTINGS, run_program
from hq.protocol import socket_is_live

log = logging.getLogger("hq.userd")
PROG = "hq-user-server"


async def serve(inst: Installation, ready: Ready | None) -> None:
    from hq.userd.service import UserServer

    config = load_server(inst)
    path = runtime_dir(inst.root) / "userd.sock"
    path.unlink(missing_ok=True)  # stale: we hold the lock
    userd = UserServer(inst, config, server_uid(inst, config), path)
    await userd.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, userd.stopping.set)
    log.info("user-server: ready for %s, pid %s, socket %s", userd.user,
             os.getpid(), path)
    if ready is not None:
        ready(None)
    await userd.stopping.wait()
    await userd.close()
    path.unlink(missing_ok=True)
    log.info("user-server: stopped")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--daemon", is_flag=True, help="Run in the background (what hq-submit does).")
@click.option("-v", "--verbose", count=True, help="Log more.")
def cli(daemon: bool, verbose: int) -> int:
    """Run your hq-user-server. hq-submit and hq-client start it when needed.

    \b
    Example (by hand, in the foreground, to watch what it does):
      hq-user-server -v
    """
    inst = Installation.locate()
    run = runtime_dir(inst.root)
    return run_daemon(PROG, detached=daemon, verbose=verbose, pid_file=run / "userd.pid",
                      log_file=state_dir() / "log" / f"user-server-{socket.gethostname()}.log",
                      serve=lambda ready: serve(inst, ready),
                      already_serving=lambda: socket_is_live(run / "userd.sock"))


def main() -> None:
    """Entry point of hq-user-server."""
    sys.exit(run_program(cli, PROG))


if __name__ == "__main__":
    main()

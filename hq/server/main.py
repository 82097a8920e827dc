"""hq-server: the scheduler and the only writer of hq's database (wiring only).

Start-up refuses a schema that is not at head (naming the command that upgrades it) and a
hq-db.cfg that others can read. TERM or INT: stop taking requests, write what is queued, exit;
a second TERM: exit at once. Running jobs are not touched by a stop: they belong to the users'
exec-servers and are re-adopted when hq-server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import resource
import signal
import socket
import sys
from pathlib import Path

import click

from hq import __version__
from hq.config import Installation, load_database, load_server
from hq.daemon import Ready, run_daemon
from hq.program import CONTEXT_SETTINGS, run_program, version_option

log = logging.getLogger("hq.server")
PROG = "hq-server"
HEAD_FILE = "hq-server.host"   # in the socket's directory; read by hq.cli.userd_link


async def serve(inst: Installation, ready: Ready | None) -> None:
    # Everything hq-server writes is the admin's alone (database, logs, pid file); what users
    # must reach (the socket, its directory, the head file) is opened up explicitly.
    os.umask(0o077)
    raise_open_file_limit()
    from hq.db.engine import create_engine, database_errors, relocate_sqlite, run_in_transaction
    from hq.db.revision import require_head
    from hq.db.settings import ensure_database_id
    from hq.server.admin import reload_configuration
    from hq.server.clock import SystemClock
    from hq.server.core import Server, keep_monitor
    from hq.server.listener import Listener
    from hq.server.loading import load_state, settle_dependencies
    from hq.server.store import Store

    config = load_server(inst)
    db = load_database(inst)
    if db.sqlite_default and db.sqlite_path == inst.legacy_sqlite_path:
        # We hold the pid lock, so no hq-server has it open: the one safe moment to move it.
        relocate_sqlite(inst.legacy_sqlite_path, inst.data_dir / "hq.db")
        db = load_database(inst)
    engine = create_engine(db)
    with database_errors(db):
        require_head(engine)
        # a database made by an older hq has no identity yet
        run_in_transaction(engine, lambda conn: ensure_database_id(conn, dt.datetime.now(dt.UTC)))
        with engine.connect() as conn:
            cluster, users = load_state(conn)
    loop = asyncio.get_running_loop()
    store = Store(engine, loop, flush_interval=config.db_flush_interval_s,
                  batch_max=config.db_batch_max)
    store.start()
    server = Server(inst=inst, config=config, database=db.describe(), cluster=cluster,
                    store=store, users=users, clock=SystemClock())
    instance_id = await server.journal.server_started(socket.gethostname(), os.getpid(),
                                                      __version__)
    settle_dependencies(cluster, server.journal)
    with engine.connect() as conn:
        server.layouts.resume(conn)
        server.notifier.load(conn)
    listener = Listener(server)
    await listener.start(config.socket_path)
    head_file = write_head_file(config.socket_path.parent, config.ssh_address)
    scheduler = asyncio.create_task(server.dispatcher.run())
    health = asyncio.create_task(server.health.watch())
    monitor = asyncio.create_task(keep_monitor(server))

    stops = 0

    def on_stop_signal() -> None:
        nonlocal stops
        stops += 1
        if stops > 1:
            log.warning("server: second stop signal, exiting now")
            os._exit(1)
        log.info("server: stop signal, shutting down")
        server.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(
        reload_configuration(server)))
    log.info("server: hq-server %s ready, pid %d, socket %s, database %s, %d unfinished jobs, "
             "%d hosts, cluster %s", __version__, os.getpid(), config.socket_path,
             db.describe(), sum(1 for j in cluster.jobs.values() if not j.state.finished),
             len(cluster.hosts), "active" if cluster.active else "deactivated")
    if ready is not None:
        ready(None)
    await server.stopping.wait()
    scheduler.cancel()
    health.cancel()
    monitor.cancel()
    server.layouts.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await monitor
    await listener.close()
    config.socket_path.unlink(missing_ok=True)
    head_file.unlink(missing_ok=True)
    await server.journal.server_stopped(instance_id)
    store.stop()
    engine.dispose()
    log.info("server: stopped")


def raise_open_file_limit() -> None:
    """As many open files as this account may have: every user's connections count."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("server: open file limit raised from %d to %d", soft, hard)


def write_head_file(run_dir: Path, ssh_address: str | None) -> Path:
    """Tell commands on other hosts where hq-server's host is: its hostname (to know whether
    they run there) and the address to ssh to (to reach their user-server there)."""
    path = run_dir / HEAD_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{socket.gethostname()}\n{ssh_address or socket.gethostname()}\n")
    tmp.chmod(0o644)
    tmp.replace(path)
    return path


@click.command(context_settings=CONTEXT_SETTINGS)
@version_option
@click.option("--daemon", is_flag=True,
              help="Run in the background (log in var/log/hq-server.log); returns once the "
                   "server accepts requests, or fails with the reason.")
@click.option("-v", "--verbose", count=True, help="Log more (debug with -vv).")
def cli(daemon: bool, verbose: int) -> int:
    """Run hq-server, the scheduler of this hq installation.

    \b
    Examples:
      hq-server --daemon        start in the background
      hq-server -v              run in the foreground, log to the terminal
      hq-admin shutdown         stop it (or send it SIGTERM)
    """
    inst = Installation.locate()
    config = load_server(inst)
    load_database(inst)  # a world-readable hq-db.cfg stops us here, before detaching
    return run_daemon(PROG, detached=daemon, log_file=config.log_file, verbose=verbose,
                      pid_file=config.pid_file, serve=lambda ready: serve(inst, ready))


def main() -> None:
    """Entry point of hq-server."""
    sys.exit(run_program(cli, PROG))


if __name__ == "__main__":
    main()

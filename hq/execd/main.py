"""hq-exec-server: the program behind the exec-server daemon and the bridge to it.

``--bridge`` is what the user-server runs (as a child on its own host, over ssh elsewhere):
it finds the user's exec-server daemon on this host, starting it when none listens, and then
copies bytes between its stdin/stdout and the daemon's socket, unchanged, until either side
closes. ``--daemon`` detaches and runs the daemon, returning once it listens (the bridge
starts it so); ``--foreground`` runs it attached, logging to stderr as well, for debugging.
The life cycle (detach, pid lock, logging, the one-line error) is ``hq.daemon``'s, as for
every hq daemon.

Files, all per installation and host in the user's private runtime directory
(``hq.auth.runtime_dir``): ``execd-<host>.sock`` (the daemon's socket), ``execd-<host>.pid``
(locked by the running daemon), ``execd-<host>.lock`` (locked by a bridge while it starts the
daemon). Log: ``~/.hq/log/execd-<host>.log``. Settings come in the user-server's hello, never
in argv.

The bridge path imports only what it needs (no asyncio, no psutil): it runs once per
connection and its start-up time adds to every user-server's (re)connect.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hq.errors import Unavailable
from hq.program import CONTEXT_SETTINGS, run_program
from hq.protocol import relay_stdio

if TYPE_CHECKING:
    from hq.config import Installation
    from hq.daemon import Ready

PROG = "hq-exec-server"
START_TIMEOUT_S = 10.0
LOCK_WAIT_S = 3.0  # how long a new daemon waits for an exiting one's lock


def daemon_files(runtime_dir: Path, hostname: str) -> tuple[Path, Path, Path]:
    """(socket, daemon pid lock, start lock) of this user's exec-server on ``hostname``."""
    # The hostname is in the names because test hosts share /tmp across network namespaces.
    base = f"{runtime_dir}/execd-{hostname}"
    return Path(f"{base}.sock"), Path(f"{base}.pid"), Path(f"{base}.lock")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--bridge", "mode", flag_value="bridge",
              help="Connect stdin/stdout to this user's exec-server, starting it if needed.")
@click.option("--daemon", "mode", flag_value="daemon",
              help="(internal) Detach and run the exec-server daemon.")
@click.option("--foreground", "mode", flag_value="foreground",
              help="Run the exec-server daemon in the foreground, logging to stderr too.")
@click.option("--hwdetect", "mode", flag_value="hwdetect",
              help="Print what this host has (cores, sockets x cores, memory, GPUs) and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --hwdetect: one JSON document.")
def cli(mode: str | None, as_json: bool) -> int:
    """Run one user's jobs on this host (started by hq-user-server, not by hand).

    \b
    Examples:
      hq-exec-server --bridge      # what hq-user-server runs on each host
      hq-exec-server --hwdetect    # cores, memory and GPUs of this host, for cluster.tab
    """
    if mode == "hwdetect":
        return hwdetect(as_json)
    if mode == "bridge":
        return bridge()
    if mode in ("daemon", "foreground"):
        return daemon(detached=mode == "daemon")
    raise click.UsageError("say --bridge, --daemon or --foreground")


def hwdetect(as_json: bool) -> int:
    import dataclasses
    import json

    from hq.hardware import detect

    found = detect()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(found), indent=2))
        return 0
    sockets = (f" ({found.sockets} socket{'s' if found.sockets != 1 else ''} x "
               f"{found.cores_per_socket})" if found.sockets and found.cores_per_socket else "")
    click.echo(f"cores:  {found.cores}{sockets}   (cluster.tab cores: {found.cores_text()})")
    click.echo(f"memory: {found.memory_mb} MiB")
    click.echo(f"gpus:   {', '.join(found.gpus) if found.gpus else 'none'}")
    return 0


def main() -> None:
    """Entry point: errors become one line on stderr and a non-zero exit code."""
    try:
        sys.exit(run_program(cli, PROG))
    except OSError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        sys.exit(1)


# --- bridge -----------------------------------------------------------------------------------

def bridge() -> int:
    """Find or start the daemon, then relay bytes both ways until one side closes."""
    from hq import auth
    from hq.config import Installation

    inst = Installation.locate()
    sock_path, _pid_lock, start_lock = daemon_files(auth.runtime_dir(inst.root),
                                                    socket.gethostname())
    sock = _connect(sock_path) or _start_daemon(inst.root, sock_path, start_lock)
    relay_stdio(sock, chunk=256 * 1024)
    return 0


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    sock.settimeout(None)
    return sock


def _start_daemon(root: Path, sock_path: Path, start_lock: Path) -> socket.socket:
    """Start the daemon under the start lock, so that two bridges never start two."""
    deadline = time.monotonic() + START_TIMEOUT_S
    fd = os.open(start_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Unavailable(f"another bridge holds {start_lock} for more than "
                                      f"{START_TIMEOUT_S:.0f} s") from None
                time.sleep(0.02)
        sock = _connect(sock_path)  # another bridge may have started it meanwhile
        if sock is not None:
            return sock
        env = {**os.environ, "HQPATH": str(root)}
        # -P: the current directory (the user's home over ssh) must not shadow hq. stderr to
        # a file, not a pipe: the daemon must not hold our pipe open.
        with tempfile.TemporaryFile() as errors:
            try:
                done = subprocess.run(
                    [sys.executable, "-P", "-m", "hq.execd.main", "--daemon"], env=env,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                    timeout=START_TIMEOUT_S, check=False, close_fds=True)
                code = done.returncode
            except subprocess.TimeoutExpired:
                code = None
            errors.seek(0)
            complaint = errors.read(64 * 1024).decode(errors="replace")
        sock = _connect(sock_path)
        if sock is None:
            lines = [line for line in complaint.strip().splitlines() if line.strip()]
            why = lines[-1] if lines else (
                f"no socket at {sock_path} within {START_TIMEOUT_S:.0f} s" if code is None
                else f"exit status {code}")
            raise Unavailable(f"the exec-server did not start: {why} "
                              f"(log: ~/.hq/log/execd-{socket.gethostname()}.log)")
        return sock
    finally:
        os.close(fd)  # releases the start lock


# --- daemon -----------------------------------------------------------------------------------

def daemon(*, detached: bool) -> int:
    """Run the exec-server daemon (``hq.daemon.run_daemon``) until it is idle or told to
    stop; detached, the starting process returns once it listens."""
    from hq import auth
    from hq.config import Installation
    from hq.daemon import run_daemon

    inst = Installation.locate()
    hostname = socket.gethostname()
    sock_path, pid_lock, _start_lock = daemon_files(auth.runtime_dir(inst.root), hostname)
    log_file = auth.private_dir(auth.state_dir() / "log", "log directory") / \
        f"execd-{hostname}.log"
    return run_daemon(PROG, detached=detached, log_file=log_file, verbose=0, pid_file=pid_lock,
                      serve=lambda ready: serve(inst, sock_path, hostname, ready),
                      already_serving=lambda: _connect_and_close(sock_path),
                      lock_wait_s=LOCK_WAIT_S, log_both=not detached)


def _connect_and_close(path: Path) -> bool:
    sock = _connect(path)
    if sock is None:
        return False
    sock.close()
    return True


async def serve(inst: Installation, sock_path: Path, hostname: str, ready: Ready | None) -> None:
    """Listen, report ready, serve until idle or stopped. Running jobs are left alone."""
    import logging

    from hq import auth
    from hq.execd.service import ExecServer

    os.chdir("/")  # hold no directory busy (an unmountable home, say)
    os.umask(0o077)  # the daemon's own files (socket, locks); jobs get their own umask
    # Jobs inherit ignored signals through exec: whatever started the bridge (nohup, a
    # background shell) must not decide that for them.
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    sock = listen(sock_path)
    server = ExecServer(sock, sock_path, hostname=hostname, user=auth.user_name(os.geteuid()),
                        installation=auth.installation_id(inst.root))
    logging.getLogger(__name__).info("exec-server %s: pid %s, installation %s", hostname,
                                     os.getpid(), inst.root)
    if ready is not None:
        ready(None)
    await server.serve()


def listen(sock_path: Path) -> socket.socket:
    """Listen on ``sock_path``; the caller holds the pid lock, so a socket file found here is
    stale."""
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))
    os.chmod(sock_path, 0o600)  # the directory is 0700 already; belt and braces
    sock.listen(128)
    return sock


if __name__ == "__main__":
    main()

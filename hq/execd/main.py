"""hq-exec-server: the program behind the exec-server daemon and the bridge to it.

``--bridge`` is what the user-server runs (as a child on its own host, over ssh elsewhere):
it finds the user's exec-server daemon on this host, starting it when none listens, and then
copies bytes between its stdin/stdout and the daemon's socket, unchanged, until either side
closes. ``--daemon`` detaches and runs the daemon (the bridge starts it so); ``--foreground``
runs it attached, logging to stderr as well, for debugging.

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
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

from hq.errors import HqError, Unavailable
from hq.protocol import relay_stdio

PROG = "hq-exec-server"
START_TIMEOUT_S = 10.0
LOCK_WAIT_S = 3.0  # how long a new daemon waits for an exiting one's lock


def daemon_files(runtime_dir: Path, hostname: str) -> tuple[Path, Path, Path]:
    """(socket, daemon pid lock, start lock) of this user's exec-server on ``hostname``."""
    # The hostname is in the names because test hosts share /tmp across network namespaces.
    base = f"{runtime_dir}/execd-{hostname}"
    return Path(f"{base}.sock"), Path(f"{base}.pid"), Path(f"{base}.lock")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bridge", "mode", flag_value="bridge",
              help="Connect stdin/stdout to this user's exec-server, starting it if needed.")
@click.option("--daemon", "mode", flag_value="daemon",
              help="(internal) Detach and run the exec-server daemon.")
@click.option("--foreground", "mode", flag_value="foreground",
              help="Run the exec-server daemon in the foreground, logging to stderr too.")
def cli(mode: str | None) -> int:
    """Run one user's jobs on this host (started by hq-user-server, not by hand).

    Example, what hq-user-server runs on each host (as a child here, over ssh elsewhere):

        hq-exec-server --bridge
    """
    if mode == "bridge":
        return bridge()
    if mode == "daemon":
        return daemon()
    if mode == "foreground":
        return serve(detached=False)
    raise click.UsageError("say --bridge, --daemon or --foreground")


def main() -> None:
    """Entry point: errors become one line on stderr and a non-zero exit code."""
    try:
        code = cli.main(prog_name=PROG, standalone_mode=False)
    except HqError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except click.ClickException as err:
        print(f"{PROG}: error: {err.format_message()}", file=sys.stderr)
        sys.exit(err.exit_code)
    except OSError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


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
        # -P: the current directory (the user's home over ssh) must not shadow hq.
        starter = subprocess.Popen(
            [sys.executable, "-P", "-m", "hq.execd.main", "--daemon"], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True)
        assert starter.stderr is not None
        # The daemon closes its stderr once it listens, or writes why it cannot and exits.
        complaint = _read_until_eof(starter.stderr.fileno(), deadline)
        starter.stderr.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            starter.wait(timeout=max(0.1, deadline - time.monotonic()))
        sock = _connect(sock_path)
        if sock is None:
            why = complaint.strip().splitlines()[-1] if complaint.strip() else (
                f"no socket at {sock_path} within {START_TIMEOUT_S:.0f} s")
            raise Unavailable(f"the exec-server did not start: {why} "
                              f"(log: ~/.hq/log/execd-{socket.gethostname()}.log)")
        return sock
    finally:
        os.close(fd)  # releases the start lock


def _read_until_eof(fd: int, deadline: float) -> str:
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


# --- daemon -----------------------------------------------------------------------------------

def daemon() -> int:
    """Detach (fork, setsid, fork: no controlling terminal ever again), then serve."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    # Jobs inherit ignored signals through exec: whatever started the bridge (nohup, a
    # background shell) must not decide that for them.
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    return serve(detached=True)


def serve(*, detached: bool) -> int:
    """Run the exec-server daemon until it is idle or told to stop."""
    import asyncio
    import logging

    from hq import auth
    from hq.config import Installation
    from hq.execd.service import ExecServer

    os.chdir("/")  # hold no directory busy (an unmountable home, say)
    os.umask(0o077)  # the daemon's own files (log, socket, locks); jobs get their own umask
    inst = Installation.locate()
    hostname = socket.gethostname()
    log_file = _setup_logging(hostname, to_stderr=not detached)
    sock_path, pid_lock, _start_lock = daemon_files(auth.runtime_dir(inst.root), hostname)
    try:
        sock = listen(sock_path, pid_lock, hostname)
    except (HqError, OSError) as err:
        logging.getLogger(__name__).error("exec-server %s: cannot start: %s", hostname, err)
        raise
    server = ExecServer(sock, sock_path, hostname=hostname, user=auth.user_name(os.geteuid()))
    logging.getLogger(__name__).info("exec-server %s: pid %s, installation %s, log %s",
                                     hostname, os.getpid(), inst.root, log_file)
    if detached:
        # Tells the bridge we listen (its pipe on our stderr reaches EOF); from now on the
        # log is the only output.
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.close(null)
    asyncio.run(server.serve())
    return 0


def listen(sock_path: Path, pid_lock: Path, hostname: str) -> socket.socket:
    """Lock ``pid_lock`` for the rest of this process's life, then listen on ``sock_path``.

    The lock makes this the only daemon for the socket, so a socket file found here is stale.
    Raises Unavailable when another daemon holds the lock.
    """
    fd = os.open(pid_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            # A daemon that is exiting has removed its socket first, so a bridge may start us
            # while it still holds the lock: give it a moment.
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise Unavailable(f"an exec-server (pid {other}) already runs for this "
                              f"installation on {hostname}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    # fd stays open on purpose: closing it would release the lock.
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))
    os.chmod(sock_path, 0o600)  # the directory is 0700 already; belt and braces
    sock.listen(128)
    return sock


def _setup_logging(hostname: str, *, to_stderr: bool) -> Path:
    """Log to ``~/.hq/log/execd-<host>.log`` (0700 directory; shared home, one file a host)."""
    import logging

    from hq import auth

    log_dir = auth.private_dir(auth.state_dir() / "log", "log directory")
    path = log_dir / f"execd-{hostname}.log"
    handlers: list[logging.Handler] = [logging.FileHandler(path)]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return path


if __name__ == "__main__":
    main()

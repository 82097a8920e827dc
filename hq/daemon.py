"""What every hq daemon does the same way: detach, hold its pid-file lock, and log.

``detach`` forks before anything else exists (no event loop, no threads, no database
connection) and keeps the starting process waiting until the daemon says it is ready or why it
could not start, so ``hq-server --daemon`` fails with the real reason and exit code instead of
"started" followed by silence.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import logging.handlers
import os
import select
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hq.errors import HqError, Unavailable

Ready = Callable[[str | None], None]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_MAX_BYTES = 20 * 1024 * 1024
LOG_BACKUPS = 5


def detach(prog: str, timeout: float = 60.0) -> Ready:
    """Become a daemon; returns ``ready(error)`` which the daemon calls exactly once.

    The original process exits 0 when ``ready(None)`` is called, or prints
    ``<prog>: error: <error>`` and exits with the code after ``|`` in the message (default 1).
    """
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        data = b""
        while select.select([read_end], [], [], timeout)[0]:
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            data += chunk
        if data == b"ok":
            os._exit(0)
        text = data.decode(errors="replace") or "the daemon exited while starting (see its log)"
        code, _, message = text.partition("|") if "|" in text[:4] else ("1", "", text)
        sys.stderr.write(f"{prog}: error: {message}\n")
        os._exit(int(code) if code.isdigit() else 1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)  # the session leader goes; the daemon can never regain a terminal
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)

    def ready(error: str | None) -> None:
        with contextlib.suppress(OSError):
            os.write(write_end, b"ok" if error is None else error.encode())
            os.close(write_end)

    return ready


class PidLock:
    """An exclusive lock on a pid file, held for the life of the daemon.

    The kernel drops a flock when its holder dies, so a stale pid file from a killed daemon
    never blocks a restart, and two daemons can never both hold it.
    """

    def __init__(self, path: Path, what: str, wait_s: float = 0.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # an instance that is exiting may still hold it for a moment
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                other = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(self.fd)
                raise Unavailable(f"{what} is already running (pid {other}, lock {path})"
                                  ) from None
        os.fchmod(self.fd, 0o600)  # one left 0644 by an older hq
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)


class PrivateLogFile(logging.handlers.RotatingFileHandler):
    """A log file that only its owner reads (0600, never opened through a symbolic link),
    rotated at ``LOG_MAX_BYTES`` into ``.1`` .. ``.LOG_BACKUPS``: no peer can fill a disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, delay=False)

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                     0o600)
        os.fchmod(fd, 0o600)  # one left 0644 by an older hq
        return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="backslashreplace")


def setup_logging(log_file: Path | None, verbose: int = 0, *, also_stderr: bool = False) -> None:
    """Log to ``log_file`` (0600: logs name users and jobs) or, when None, to stderr."""
    handlers: list[logging.Handler] = []
    if log_file is not None:
        log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handlers.append(PrivateLogFile(log_file))
    if log_file is None or also_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    # alembic narrates every plugin it loads at INFO; only its warnings are news
    logging.getLogger("alembic").setLevel(logging.WARNING)


def run_daemon(prog: str, *, detached: bool, log_file: Path, verbose: int, pid_file: Path,
               serve: Callable[[Ready | None], Coroutine[Any, Any, None]],
               already_serving: Callable[[], bool] = lambda: False,
               lock_wait_s: float = 0.0, log_both: bool = False) -> int:
    """The life of a daemon: detach (when asked), log, hold the pid lock, run ``serve``.

    Errors before ``serve`` reports ready reach the starting process as its one-line error and
    exit code. When the lock is taken (after waiting up to ``lock_wait_s`` for an instance
    that is exiting) and ``already_serving()`` says the other instance answers, there is
    nothing to do: exit 0. In the foreground the log goes to stderr, and with ``log_both`` to
    the log file as well.
    """
    import asyncio

    log = logging.getLogger(prog)
    ready = detach(prog) if detached else None
    try:
        setup_logging(log_file if detached or log_both else None, verbose,
                      also_stderr=log_both and not detached)
        try:
            lock = PidLock(pid_file, prog, wait_s=lock_wait_s)
        except Unavailable:
            if already_serving():
                if ready is not None:
                    ready(None)
                return 0
            raise
        try:
            asyncio.run(serve(ready))
        finally:
            lock.release()
    except HqError as err:
        if ready is None:
            raise
        log.error("%s: cannot start: %s", prog, err)
        ready(f"{err.exit_code}|{err}")
        return err.exit_code
    except Exception as err:
        log.exception("%s: crashed", prog)
        if ready is not None:
            ready(f"1|{err}")
        raise
    return 0

"""The link from hq-submit and hq-client to the user's own hq-user-server, started on demand.

The user-server listens on ``userd.sock`` in the user's private runtime directory (0700, see
``hq.auth.runtime_dir``); before saying anything the CLI checks that the process at the other
end runs as the same user (SO_PEERCRED). When nothing listens, the first CLI starts one: under
an exclusive lock on ``userd.start.lock`` it looks again (another CLI may have started it in
the meantime) and otherwise runs ``python -m hq.userd.main --daemon``, which exits 0 once the
socket accepts connections, or non-zero with a one-line reason on stderr.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hq.errors import Unavailable

if TYPE_CHECKING:
    from hq.config import Installation
    from hq.protocol import BlockingClient

SOCKET_NAME = "userd.sock"
HEAD_FILE = "hq-server.host"   # written by hq-server next to its socket
START_LOCK_NAME = "userd.start.lock"
START_TIMEOUT_S = 20.0
_NAME = "hq-user-server"
# what connect raises when nothing listens (as opposed to "cannot reach it")
_NOT_LISTENING = (FileNotFoundError, ConnectionRefusedError)


def connect_user_server(inst: Installation, program: str) -> BlockingClient:
    """A handshaken link to this user's hq-user-server for ``inst``, wherever this runs.

    Inside a job: through the exec-server that runs it (``HQ_EXECD_SOCKET``), which relays to
    the user-server. On a host other than hq-server's: over ssh to that host (``hq.cli.relay``
    there). On hq-server's host: the user-server's own socket, starting it if needed.
    """
    execd = os.environ.get("HQ_EXECD_SOCKET")
    if execd:
        client = _try_connect(Path(execd), program, name="hq-exec-server")
        if client is not None:
            return client
    head = server_head(inst)
    if head is not None and head[0] != socket.gethostname():
        from hq.cli.remote_link import connect_over_ssh

        return connect_over_ssh(inst, head[1], program)
    path = ensure_user_server(inst)
    client = _try_connect(path, program)
    if client is None:
        raise Unavailable(f"{_NAME} started but does not answer on {path}")
    return client


def server_head(inst: Installation) -> tuple[str, str] | None:
    """(hostname, ssh address) of hq-server's host as it wrote them at start, if it runs."""
    from hq.config import load_server

    try:
        lines = (load_server(inst).socket_path.parent / HEAD_FILE).read_text().split()
    except OSError:
        return None
    return (lines[0], lines[1]) if len(lines) == 2 else None


def ensure_user_server(inst: Installation) -> Path:
    """The socket of this user's user-server on this host, started first if nothing listens."""
    from hq.auth import runtime_dir
    from hq.protocol import socket_is_live

    rundir = runtime_dir(inst.root)
    path = rundir / SOCKET_NAME
    if socket_is_live(path):
        return path
    import fcntl

    fd = os.open(rundir / START_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Another CLI may have started it while we waited for the lock.
        if not socket_is_live(path):
            start_user_server(inst)
        return path
    finally:
        os.close(fd)  # releases the lock


def _try_connect(path: Path, program: str, name: str = _NAME) -> BlockingClient | None:
    """The link, or None when nothing listens at ``path``."""
    from hq.protocol import BlockingClient

    try:
        client, _welcome = BlockingClient.connect(str(path), name, role="cli", program=program,
                                                  expect_uid=os.geteuid())
    except _NOT_LISTENING:
        return None
    except OSError as err:
        raise Unavailable(f"cannot reach {name} at {path}: {err.strerror or err}") from None
    return client


def start_user_server(inst: Installation) -> None:
    """Run ``hq.userd.main --daemon`` for ``inst`` and wait until it says it is listening."""
    command = [sys.executable, "-P", "-m", "hq.userd.main", "--daemon"]
    env = {**os.environ, "HQPATH": str(inst.root)}
    # stderr goes to a file, not a pipe: a daemon that kept the pipe open would make us wait
    # for it to exit instead of for the starter.
    with tempfile.TemporaryFile() as errors:
        try:
            done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=errors, cwd="/",
                                  timeout=START_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"cannot start {_NAME}: it did not answer within "
                              f"{START_TIMEOUT_S:.0f} s") from None
        except OSError as err:
            raise Unavailable(f"cannot start {_NAME}: {sys.executable}: {err.strerror}"
                              ) from None
        if done.returncode == 0:
            return
        errors.seek(0)
        text = errors.read(64 * 1024).decode(errors="replace")
    raise Unavailable(f"cannot start {_NAME}: {start_failure_reason(text, done.returncode)}")


def start_failure_reason(stderr: str, returncode: int) -> str:
    """The one line that says why the user-server did not start."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if lines:
        reason = lines[-1]
        for prefix in (f"{_NAME}: error: ", f"{_NAME}: "):
            if reason.startswith(prefix):
                return reason[len(prefix):]
        return reason
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit status {returncode} and no message"

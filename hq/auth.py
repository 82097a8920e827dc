"""Identity and secrets: private runtime directories, secret files, job-spec signatures.

The kernel tells who is at the other end of a Unix socket (``protocol.peer_credentials``);
this module holds what a user's own processes keep to themselves: the 0700 runtime directory
with their daemons' sockets, and the per-user key (``~/.hq/job-signing.key``, 0600) with which
the user-server signs job specs and the exec-server checks them, so that neither hq-server nor
an edited database row can make hq run a command as that user.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import pwd
import secrets
import socket
import stat
from pathlib import Path

from hq.config import Installation, ServerConfig
from hq.errors import ConfigError, HqError, PermissionDenied
from hq.jobspec import JobSpec, as_signed, signed_text, signed_text_v1

SIGNING_KEY_NAME = "job-signing.key"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def check_private(path: Path, *, want_dir: bool, what: str) -> None:
    """Refuse ``path`` unless it belongs to us and nobody else may read or write it."""
    st = os.lstat(path)
    kind_ok = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        raise PermissionDenied(f"{what} {path} is not a {'directory' if want_dir else 'file'}")
    if st.st_uid != os.geteuid():
        raise PermissionDenied(f"{what} {path} belongs to uid {st.st_uid}, not to you: "
                               "refusing to use it")
    if st.st_mode & 0o077:
        raise PermissionDenied(f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                               f"it must be private: run chmod {'700' if want_dir else '600'} "
                               f"{path}")


def private_dir(path: Path, what: str) -> Path:
    """Create ``path`` (and missing parents, each 0700 too) if missing, then check it is
    private."""
    missing = []
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
    check_private(path, want_dir=True, what=what)
    return path


def installation_id(root: Path) -> str:
    """A short stable name for an installation, so two installations never share sockets."""
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


def runtime_dir(root: Path) -> Path:
    """This user's private directory for sockets and locks of one installation on this host.

    Under /tmp (host-local, short paths for the 108-byte socket limit), named by uid, 0700.
    /tmp is shared: when another account made ``/tmp/hq-<uid>`` first (or it is not a private
    directory of ours), ``~/.hq/run/<host>`` is used instead, and every hq program of this
    user on this host comes to the same decision.
    """
    try:
        base = private_dir(Path(f"/tmp/hq-{os.geteuid()}"), "runtime directory")  # noqa: S108
    except PermissionDenied as err:
        base = private_dir(state_dir() / "run" / socket.gethostname(), "runtime directory")
        _warn_once(f"{err}; using {base} instead")
    path = private_dir(base / installation_id(root), "runtime directory")
    if len(str(path)) > MAX_RUNTIME_DIR:
        raise PermissionDenied(f"runtime directory {path} is too long for Unix sockets "
                               f"(at most {MAX_RUNTIME_DIR} characters): free /tmp/hq-"
                               f"{os.geteuid()} or use a shorter home directory")
    return path


# socket names within it are up to ~40 characters; the kernel allows 107 in all
MAX_RUNTIME_DIR = 64
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    import logging

    if message not in _warned:
        _warned.add(message)
        logging.getLogger(__name__).warning("%s", message)


def state_dir() -> Path:
    """``~/.hq``: the user's private hq directory (keys, logs), shared by all hosts."""
    return private_dir(Path.home() / ".hq", "hq directory")


def load_signing_key(create: bool) -> bytes:
    """The user's job-signing key; made on first use by the user-server (``create=True``)."""
    path = state_dir() / SIGNING_KEY_NAME
    if create and not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
    try:
        check_private(path, want_dir=False, what="job-signing key")
        key = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        raise HqError(f"no job-signing key at {path}: start hq-user-server first") from None
    except ValueError:
        raise HqError(f"job-signing key {path} is damaged: delete it and restart "
                      "hq-user-server (jobs signed with it can then no longer start)") from None
    if len(key) < 32:
        raise HqError(f"job-signing key {path} is too short")
    return key


def sign_job(key: bytes, spec: JobSpec, owner: str, digest: str, *, database: str,
             submission_id: int) -> str:
    """The signature of ``spec`` (``hq.jobspec.signed_text``), as the user-server makes it."""
    text = signed_text(spec, owner, digest, database=database, submission_id=submission_id)
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def sign_notification(key: bytes, owner: str, *, database: str, submission_id: int,
                      notify: str | None, mail_user: str | None, mail_type: str | None) -> str:
    """The signature of what a submission asks to run or mail when it has ended: hq-server
    stores it and hands it back, the user-server runs nothing it did not sign."""
    text = json.dumps([1, owner, database, submission_id, notify, mail_user, mail_type],
                      separators=(",", ":"), ensure_ascii=False).encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def job_signature_ok(key: bytes, spec: JobSpec, owner: str, digest: str, *, database: str,
                     submission_id: int, accept_v1: bool = True) -> bool:
    """Whether ``spec`` carries a signature of ours for this database and submission; a
    signature of protocol version 1 (which named neither) counts only with ``accept_v1``."""
    signature = spec.signature
    if not signature:
        return False
    signed = as_signed(spec)   # an element of an array signed as a whole: the array's spec
    if signed is None:
        return False           # an index the owner never signed
    # Both kinds are 64 hex digits (the column's width): a version-1 one is tried only after
    # the current one failed, and only where it may still count (it never signed an array).
    expected = sign_job(key, signed, owner, digest, database=database,
                        submission_id=submission_id)
    if hmac.compare_digest(expected, signature):
        return True
    if not accept_v1 or spec.array_indexes is not None:
        return False
    expected = hmac.new(key, signed_text_v1(spec, owner, digest), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def server_uid(inst: Installation, config: ServerConfig) -> int:
    """The uid hq-server must run as: ``server_user``, else the owner of the installation.

    Clients compare it with the socket peer's uid before they send anything, so a process
    squatting on hq-server's socket path learns nothing.
    """
    if config.server_user is None:
        return os.stat(inst.root).st_uid
    try:
        return pwd.getpwnam(config.server_user).pw_uid
    except KeyError:
        raise ConfigError(str(inst.server_cfg), f"no such account: {config.server_user}",
                          field="server_user") from None

"""An append-only file of msgspec-encoded lines, private to its owner (0600): the file form of
the exec-server's journal (``hq.execd.journal``) and the user-server's ledger
(``hq.userd.ledger``).

Lines added during one turn of the event loop go out in one ``write`` (without a loop, at the
caller's ``flush``); a line torn by a crash mid-write is skipped when read back. ``rewrite``
replaces the whole file atomically (a temporary file renamed over it) with what still
matters, which its owner does when ``lines`` has grown. Writes are not fsync'd: a crash of the
daemon loses nothing, a crash of the machine may lose the last writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()


class AppendLog:
    """The file at ``path``, its lines decoded with ``decoder``; ``what`` names it in logs."""

    def __init__(self, path: Path, decoder: msgspec.json.Decoder[Any], what: str) -> None:
        self.path, self._decoder, self._what = path, decoder, what
        self.lines = 0          # lines in the file (read, rewritten and appended)
        self._pending: list[bytes] = []
        self._fd: int | None = None

    def read(self) -> Iterator[Any]:
        """Every whole line of the file as it is, decoded (none when it does not exist)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        for line in data.splitlines():
            self.lines += 1
            try:
                yield self._decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue   # torn by a crash

    def add(self, entry: Any) -> None:
        if not self._pending:
            with contextlib.suppress(RuntimeError):   # no loop: flushed by the caller
                asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(_encoder.encode(entry) + b"\n")

    def flush(self) -> None:
        if not self._pending or self._fd is None:
            return
        data, self._pending = b"".join(self._pending), []
        try:
            os.write(self._fd, data)
        except OSError as err:
            log.error("%s %s: cannot write: %s", self._what, self.path, err)
        self.lines += data.count(b"\n")

    def rewrite(self, entries: Iterable[Any]) -> None:
        """The file holds ``entries`` only, from now on appended to."""
        lines = [_encoder.encode(entry) + b"\n" for entry in entries]
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, b"".join(lines))
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.lines = len(lines)

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

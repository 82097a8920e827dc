"""The exec-server's own record, so that a successor (after ``kill -9``, say) loses nothing.

An append-only file in the user's runtime directory (``execd-<host>.journal``, 0600): each job
start, each end not yet acknowledged, each acknowledgement, and now and then when a
user-server of each database was last in contact. A new exec-server replays it: it reports
the ends its predecessor saw but could not hand over (so no job is run again for want of its
end), a job that started and is gone without a recorded end as ended with its exit status
unknown (it may have run to its end: it is not run again), and it keeps the predecessor's
leases (so a job cut off from every user-server still dies on time). The running jobs
themselves are found from /proc (``hq.execd.processes``).

Writes are gathered per turn of the event loop into one ``write``; a torn last line (a crash
mid-write) is skipped when read. The file is rewritten with only what still matters when it
has grown by ``COMPACT_LINES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import msgspec

from hq.protocol.messages import JobEnded

log = logging.getLogger(__name__)

COMPACT_LINES = 20_000
CONTACT_EVERY_S = 1.0

JobKey = tuple[str, int, int]


class _Start(msgspec.Struct, tag="start"):
    db: str
    id: int
    attempt: int
    pid: int
    at: float
    cores: int = 1


class _End(msgspec.Struct, tag="end"):
    db: str
    event: JobEnded


class _Ack(msgspec.Struct, tag="ack"):
    db: str
    keys: list[tuple[int, int]]   # (job id, attempt)


class _Contact(msgspec.Struct, tag="contact"):
    db: str
    at: float
    lease: float | None = None   # the lease that user-server set, so a successor keeps it


_Line = _Start | _End | _Ack | _Contact

Started = dict[JobKey, tuple[int, float, int]]
"""job -> (pid, start time, cores) of the jobs started and not seen to end"""
_decoder = msgspec.json.Decoder(_Line)
_encoder = msgspec.json.Encoder()


class ExecJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: list[bytes] = []
        self._lines = 0
        self._contacts_written: dict[str, float] = {}
        self.leases: dict[str, float] = {}   # database -> lease, as last set (load, contact)
        self._fd: int | None = None

    def load(self) -> tuple[dict[JobKey, JobEnded], dict[str, float], Started]:
        """The ends not acknowledged, the last contact per database and the jobs started
        without a recorded end, as the file has them."""
        ended: dict[JobKey, JobEnded] = {}
        contacts: dict[str, float] = {}
        started: Started = {}
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return ended, contacts, started
        for line in data.splitlines():
            try:
                entry = _decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue   # a line torn by a crash
            if isinstance(entry, _Start):
                started[(entry.db, entry.id, entry.attempt)] = (entry.pid, entry.at, entry.cores)
            elif isinstance(entry, _End):
                key = (entry.db, entry.event.id, entry.event.attempt)
                ended[key] = entry.event
                started.pop(key, None)
            elif isinstance(entry, _Ack):
                for job_id, attempt in entry.keys:
                    ended.pop((entry.db, job_id, attempt), None)
            else:
                contacts[entry.db] = max(entry.at, contacts.get(entry.db, 0.0))
                if entry.lease is not None:
                    self.leases[entry.db] = entry.lease
        self._lines = len(data.splitlines())
        self._contacts_written = dict(contacts)
        return ended, contacts, started

    def open(self, ended: dict[JobKey, JobEnded], contacts: dict[str, float],
             started: Started) -> None:
        """Start writing, from a file that holds only ``ended``, ``contacts``, ``started``."""
        self._rewrite(ended, contacts, started)

    def started(self, key: JobKey, pid: int, at: float, cores: int = 1) -> None:
        self._add(_Start(key[0], key[1], key[2], pid, at, cores))

    def ended(self, key: JobKey, event: JobEnded) -> None:
        self._add(_End(key[0], event))

    def acked(self, database: str, keys: list[tuple[int, int]]) -> None:
        self._add(_Ack(database, keys))

    def contact(self, database: str, at: float, lease: float | None) -> None:
        """Note a user-server's contact and its lease (written at most every
        CONTACT_EVERY_S, and whenever the lease changes)."""
        changed = lease is not None and self.leases.get(database) != lease
        if changed or at - self._contacts_written.get(database, 0.0) >= CONTACT_EVERY_S:
            self._contacts_written[database] = at
            if lease is not None:
                self.leases[database] = lease
            self._add(_Contact(database, at, lease))

    def _add(self, entry: _Line) -> None:
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
            log.error("exec-server journal %s: cannot write: %s", self.path, err)
        self._lines += data.count(b"\n")

    def compact_if_grown(self, ended: dict[JobKey, JobEnded], contacts: dict[str, float],
                         started: Started) -> None:
        if self._lines >= COMPACT_LINES:
            self.flush()
            self._rewrite(ended, contacts, started)

    def _rewrite(self, ended: dict[JobKey, JobEnded], contacts: dict[str, float],
                 started: Started) -> None:
        tmp = self.path.with_suffix(".tmp")
        lines = [_encoder.encode(_Start(key[0], key[1], key[2], pid, at, cores)) + b"\n"
                 for key, (pid, at, cores) in started.items() if key not in ended]
        lines += [_encoder.encode(_End(key[0], event)) + b"\n" for key, event in ended.items()]
        lines += [_encoder.encode(_Contact(db, at, self.leases.get(db))) + b"\n"
                  for db, at in contacts.items()]
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
        self._lines = len(lines)
        self._contacts_written = dict(contacts)

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

"""The exec-server's own record, so that a successor (after ``kill -9``, say) loses nothing.

An append-only file in the user's runtime directory (``execd-<host>.journal``, 0600): each job
start, each end not yet acknowledged, each acknowledgement, and now and then when a
user-server of each database was last in contact. A new exec-server replays it: it reports
the ends its predecessor saw but could not hand over (so no job is run again for want of its
end), a job that started and is gone without a recorded end as ended with its exit status
unknown (it may have run to its end: it is not run again), and it keeps the predecessor's
leases (so a job cut off from every user-server still dies on time). The running jobs
themselves are found from /proc (``hq.execd.processes``).

The file is an ``hq.append_log.AppendLog`` (writes gathered per turn of the event loop, torn
lines skipped), rewritten with only what still matters when it has grown by ``COMPACT_LINES``.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from hq.append_log import AppendLog
from hq.protocol.messages import JobEnded

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


class ExecJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._log = AppendLog(path, _decoder, "exec-server journal")
        self._contacts_written: dict[str, float] = {}
        self.leases: dict[str, float] = {}   # database -> lease, as last set (load, contact)

    def load(self) -> tuple[dict[JobKey, JobEnded], dict[str, float], Started]:
        """The ends not acknowledged, the last contact per database and the jobs started
        without a recorded end, as the file has them."""
        ended: dict[JobKey, JobEnded] = {}
        contacts: dict[str, float] = {}
        started: Started = {}
        for entry in self._log.read():
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
        self._contacts_written = dict(contacts)
        return ended, contacts, started

    def open(self, ended: dict[JobKey, JobEnded], contacts: dict[str, float],
             started: Started) -> None:
        """Start writing, from a file that holds only ``ended``, ``contacts``, ``started``."""
        self._rewrite(ended, contacts, started)

    def started(self, key: JobKey, pid: int, at: float, cores: int = 1) -> None:
        self._log.add(_Start(key[0], key[1], key[2], pid, at, cores))

    def ended(self, key: JobKey, event: JobEnded) -> None:
        self._log.add(_End(key[0], event))

    def acked(self, database: str, keys: list[tuple[int, int]]) -> None:
        self._log.add(_Ack(database, keys))

    def contact(self, database: str, at: float, lease: float | None) -> None:
        """Note a user-server's contact and its lease (written at most every
        CONTACT_EVERY_S, and whenever the lease changes)."""
        changed = lease is not None and self.leases.get(database) != lease
        if changed or at - self._contacts_written.get(database, 0.0) >= CONTACT_EVERY_S:
            self._contacts_written[database] = at
            if lease is not None:
                self.leases[database] = lease
            self._log.add(_Contact(database, at, lease))

    def flush(self) -> None:
        self._log.flush()

    def compact_if_grown(self, ended: dict[JobKey, JobEnded], contacts: dict[str, float],
                         started: Started) -> None:
        if self._log.lines >= COMPACT_LINES:
            self._log.flush()
            self._rewrite(ended, contacts, started)

    def _rewrite(self, ended: dict[JobKey, JobEnded], contacts: dict[str, float],
                 started: Started) -> None:
        self._log.rewrite([
            *(_Start(key[0], key[1], key[2], pid, at, cores)
              for key, (pid, at, cores) in started.items() if key not in ended),
            *(_End(key[0], event) for key, event in ended.items()),
            *(_Contact(db, at, self.leases.get(db)) for db, at in contacts.items())])
        self._contacts_written = dict(contacts)

    def close(self) -> None:
        self._log.close()

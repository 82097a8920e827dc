"""Every job this user-server handed to an exec-server: no signed job runs twice by hq-server's
word alone.

A signature proves that the user submitted a spec, not that hq-server may run it as often as
it likes: a compromised hq-server, or an edited database row, could hand the same signed job
over again. So the user-server keeps, per database, a ledger of each (submission, index) it
released, where, and what became of it, in ``~/.hq/ledger/<database>.log`` (0600). It hands a
job over again only when that release provably came to nothing: the exec-server said it ended
without running (refused, cannot start, killed by its lease) or that it never had it, or the
host it went to has been out of contact for longer than the lease (its exec-server has killed
it by then); and at most ``MAX_RELEASES`` times. A job that ran to an end is never released
again, unless it failed and its signed spec asks for more runs (``--retries``): a run that
exited non-zero or was killed by a signal may be handed over once more per retry it allows.

The file is an ``hq.append_log.AppendLog`` (one line per change, gathered per turn of the
event loop), read back at start, and rewritten with only the live entries when it has grown;
beyond ``MAX_ENTRIES`` the oldest finished entries are forgotten (a replay of one of those is
the remaining risk, and the docs say so). Writes are not fsync'd: a crash of the user-server
loses nothing, a crash of the whole machine may lose the last writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from hq.append_log import AppendLog
from hq.protocol.messages import JobEnded, RunJob

MAX_RELEASES = 20
MAX_ENTRIES = 2_000_000
COMPACT_LINES = 200_000

Key = tuple[int, int]
"""(submission id, array index; -1 for a job without one)"""

OUT, FREE, DONE, FAILED = "out", "free", "done", "failed"


@dataclass(slots=True)
class Entry:
    state: str          # OUT: handed over, end unknown; FREE: came to nothing; DONE: ran
    releases: int
    host: str
    at: float           # when it was last handed over (monotonic of the writer's start) ...
    job_id: int
    attempt: int = 0    # hq-server's attempt number of that release
    failures: int = 0   # runs that ended in a failure (exit code or signal)


class _Release(msgspec.Struct, tag="release", array_like=True):
    submission: int
    index: int
    host: str
    job_id: int
    attempt: int = 0


class _Settle(msgspec.Struct, tag="settle", array_like=True):
    submission: int
    index: int
    state: str


class _Cutoff(msgspec.Struct, tag="cutoff", array_like=True):
    submission: int


_Line = _Release | _Settle | _Cutoff
_decoder = msgspec.json.Decoder(_Line)


class Ledger:
    """The ledger of one database (see the module docstring)."""

    def __init__(self, path: Path, clock_start: float) -> None:
        self.path = path
        self.entries: dict[Key, Entry] = {}
        self.by_job: dict[int, Key] = {}     # jobs handed over whose end is not known yet
        # protocol-1 signatures (no submission in them) are accepted only below this
        # submission id: the first one this user got from hq-server since the upgrade
        self.v1_cutoff: int | None = None
        self._log = AppendLog(path, _decoder, "ledger")
        self._start = clock_start

    @classmethod
    def open(cls, directory: Path, database: str, now: float) -> Ledger:
        from hq.auth import private_dir

        private_dir(directory, "ledger directory")
        ledger = cls(directory / f"{database or 'protocol-1'}.log", now)
        ledger._load()
        ledger._rewrite()
        return ledger

    # --- the rules ---------------------------------------------------------------------------

    def repeats(self, key: Key, host: str, attempt: int) -> bool:
        """``key`` is out on ``host`` as this very attempt: handing it over again is harmless
        (an exec-server runs an attempt once) and is no new release."""
        entry = self.entries.get(key)
        return (entry is not None and entry.state == OUT and entry.host == host
                and entry.attempt == attempt)

    def may_release(self, key: Key, host_silent_for: float, lease_s: float,
                    retries: int = 0) -> str | None:
        """None when ``key`` may be handed over now, else why not (one line); ``retries``:
        the runs after a failure its signed spec allows."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.releases >= MAX_RELEASES:
            return f"refused: handed over {entry.releases} times already"
        if entry.state == DONE:
            return "refused: it has run already (a replay?)"
        if entry.state == FAILED and entry.failures > retries:
            return (f"refused: it failed {entry.failures} time(s) and may run again "
                    f"{retries} time(s) (a replay?)")
        if entry.state == OUT and host_silent_for <= lease_s:
            return (f"refused: it was handed to host {entry.host} and is not known to have "
                    "ended there")
        return None

    def hand_over(self, jobs: list[RunJob], host: str, silent_for: Callable[[str], float],
                  lease_s: float, now: float
                  ) -> tuple[list[RunJob], list[tuple[RunJob, str]], list[tuple[RunJob, str]]]:
        """Of signed ``jobs`` for ``host``: those to hand over now (their release recorded),
        those that must wait for another host (last handed there, maybe still there) with
        that host, and the refused ones with the reason. ``silent_for(host)``: how long that
        host's exec-server has not been heard."""
        good, waiting, refused = [], [], []
        for job in jobs:
            key = (job.submission_id, -1 if job.spec.array_index is None
                   else job.spec.array_index)
            entry = self.entries.get(key)
            if self.repeats(key, host, job.attempt):
                good.append(job)
                continue
            why = self.may_release(key, silent_for(entry.host if entry is not None else host),
                                   lease_s, job.spec.retries)
            if why is None:
                self.released(key, host, job.id, now, job.attempt)
                good.append(job)
            elif entry is not None and entry.state == OUT and entry.host != host:
                waiting.append((job, entry.host))
            else:
                refused.append((job, why))
        return good, waiting, refused

    def released(self, key: Key, host: str, job_id: int, now: float, attempt: int = 0) -> None:
        entry = self.entries.get(key)
        releases = 1 if entry is None else entry.releases + 1
        if entry is not None:
            self.by_job.pop(entry.job_id, None)
        self.entries[key] = Entry(OUT, releases, host, now, job_id, attempt,
                                  0 if entry is None else entry.failures)
        self.by_job[job_id] = key
        self._add(_Release(key[0], key[1], host, job_id, attempt))
        if len(self.entries) > MAX_ENTRIES:
            self._forget_oldest()

    def ended(self, job_id: int, ran: bool, failed: bool = False) -> None:
        """The exec-server reported the job's end: it ran (never again, unless it ``failed``
        and may be retried), or not."""
        key = self.by_job.pop(job_id, None)
        if key is not None:
            self._settle(key, (FAILED if failed else DONE) if ran else FREE)

    def ended_event(self, event: JobEnded) -> None:
        """An exec-server's ``ended`` event: whether the job ran (a lease kill of a job
        counts as not run) and whether it failed in a way ``--retries`` may run it again for."""
        ran = event.pid is not None and not (event.reason or "").startswith("lease expired")
        failed = not event.reason and (bool(event.exit_code) or event.signal is not None)
        self.ended(event.id, ran=ran, failed=failed)

    def came_to_nothing(self, job_id: int) -> None:
        """Never delivered, or not known to the exec-server it went to."""
        key = self.by_job.pop(job_id, None)
        if key is not None:
            self._settle(key, FREE)

    def out_on(self, host: str) -> list[int]:
        """Jobs handed to ``host`` whose end is not known."""
        return [job_id for job_id, key in self.by_job.items() if self.entries[key].host == host]

    def first_submission(self, submission_id: int) -> None:
        """Note the first submission id hq-server reserved for us (the protocol-1 cutoff)."""
        if self.v1_cutoff is None:
            self.v1_cutoff = submission_id
            self._add(_Cutoff(submission_id))

    def _settle(self, key: Key, state: str) -> None:
        entry = self.entries.get(key)
        if entry is not None and entry.state != state:
            entry.state = state
            entry.failures += state == FAILED
            self._add(_Settle(key[0], key[1], state))

    # --- the file ------------------------------------------------------------------------------

    def _load(self) -> None:
        for item in self._log.read():
            if isinstance(item, _Release):
                key = (item.submission, item.index)
                old = self.entries.get(key)
                self.entries[key] = Entry(OUT, 1 if old is None else old.releases + 1, item.host,
                                          self._start, item.job_id, item.attempt,
                                          0 if old is None else old.failures)
            elif isinstance(item, _Settle):
                entry = self.entries.get((item.submission, item.index))
                if entry is not None:
                    entry.failures += item.state == FAILED and entry.state != FAILED
                    entry.state = item.state
            elif self.v1_cutoff is None:
                self.v1_cutoff = item.submission
        self.by_job = {e.job_id: k for k, e in self.entries.items() if e.state == OUT}

    def _add(self, item: _Line) -> None:
        self._log.add(item)

    def flush(self) -> None:
        self._log.flush()
        if self._log.lines > COMPACT_LINES:
            self._rewrite()

    def _rewrite(self) -> None:
        lines: list[_Line] = [] if self.v1_cutoff is None else [_Cutoff(self.v1_cutoff)]
        for (submission, index), entry in self.entries.items():
            # the failed runs before the last release, so that loading counts them again
            earlier_failures = entry.failures - (entry.state == FAILED)
            for n in range(entry.releases):
                lines.append(_Release(submission, index, entry.host, entry.job_id,
                                      entry.attempt))
                if n < earlier_failures and n < entry.releases - 1:
                    lines.append(_Settle(submission, index, FAILED))
            if entry.state != OUT:
                lines.append(_Settle(submission, index, entry.state))
        self._log.rewrite(lines)

    def _forget_oldest(self) -> None:
        """Keep the ledger bounded: drop the oldest finished entries (lowest submissions)."""
        finished = sorted(k for k, e in self.entries.items() if e.state != OUT)
        for key in finished[:len(self.entries) - MAX_ENTRIES + MAX_ENTRIES // 10]:
            del self.entries[key]

    def close(self) -> None:
        self.flush()
        self._log.close()

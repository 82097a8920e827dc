"""Jobs handed to an exec-server ahead of a free core, and the cores its jobs may use.

hq-server places more jobs on a host than it has free cores when they are short (DESIGN §7):
the exec-server keeps them here and starts the next one the moment one of its jobs ends, with
no message in between. How many cores a user's jobs may use on the host at once is hq-server's
word, the *allotment*, sent with every ``run`` (per database: a link speaks for one). A job
waits here until it fits in the allotment; a ``withdraw`` takes it out before it starts, or
finds it started. Nothing here is written down: after a crash the queue is gone, the next
sync shows its jobs unknown, and hq-server puts them back in its queue (they never started).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from hq.execd.runner import JobKey, Launch


@dataclass(slots=True)
class Waiting:
    """A job checked (signature, submission) and ready to start, waiting for a core."""

    key: JobKey
    cores: int
    launch: Launch
    log_path: tuple[str, int] | None   # its -l file and umask, if it has one


class JobQueue:
    """The waiting jobs of each database, in the order they came, and the cores in use."""

    def __init__(self) -> None:
        self._waiting: dict[str, OrderedDict[JobKey, Waiting]] = {}
        self._allotment: dict[str, int | None] = {}
        self._busy: dict[str, int] = {}            # database -> cores its running jobs hold
        self._cores: dict[JobKey, int] = {}        # running job -> its cores

    def __contains__(self, key: object) -> bool:
        waiting = self._waiting.get(key[0]) if isinstance(key, tuple) else None
        return waiting is not None and key in waiting

    def add(self, job: Waiting) -> None:
        self._waiting.setdefault(job.key[0], OrderedDict())[job.key] = job

    def set_allotment(self, database: str, cores: int | None) -> None:
        """The cores ``database``'s jobs may use at once; None: no limit (protocol 1: every
        job handed over starts at once)."""
        self._allotment[database] = cores

    def startable(self, database: str) -> list[Waiting]:
        """Take out, in order, the waiting jobs that fit in the allotment now (they are
        counted as running from here on: the caller starts them)."""
        waiting = self._waiting.get(database)
        if not waiting:
            return []
        allotment = self._allotment.get(database)
        busy = self._busy.get(database, 0)
        taken = []
        while waiting:
            job = next(iter(waiting.values()))
            if allotment is not None and busy + job.cores > allotment and busy > 0:
                break   # (a job wider than the allotment still starts on an idle host)
            del waiting[job.key]
            busy += job.cores
            self._cores[job.key] = job.cores
            taken.append(job)
        self._busy[database] = busy
        if not waiting:
            del self._waiting[database]
        return taken

    def running(self, key: JobKey, cores: int) -> None:
        """A job that runs without having waited here (adopted from a predecessor)."""
        if key not in self._cores:
            self._cores[key] = cores
            self._busy[key[0]] = self._busy.get(key[0], 0) + cores

    def cores_of(self, key: JobKey) -> int:
        return self._cores.get(key, 1)

    def ended(self, key: JobKey) -> None:
        """A job taken from here (or adopted) has ended, or did not start after all."""
        cores = self._cores.pop(key, None)
        if cores is not None:
            self._busy[key[0]] = max(0, self._busy.get(key[0], 0) - cores)

    def withdraw(self, keys: list[JobKey]) -> list[Waiting]:
        """Take these jobs out if they are still waiting; the others are left as they are."""
        out = []
        for key in keys:
            waiting = self._waiting.get(key[0])
            if waiting is not None and key in waiting:
                out.append(waiting.pop(key))
                if not waiting:
                    del self._waiting[key[0]]
        return out

    def all_of(self, database: str) -> list[Waiting]:
        """The waiting jobs of ``database``, in order."""
        return list(self._waiting.get(database, {}).values())

    def databases(self) -> list[str]:
        return list(self._waiting)

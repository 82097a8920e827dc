"""CPU pinning of jobs (``[execd] pin_cpus``): each job on distinct cores.

A ``-c 4`` job is bound with ``sched_setaffinity`` to the 4 CPUs that the fewest jobs hold,
among the CPUs the exec-server itself may use. Its own jobs (this user's, on this host) are
counted exactly. Other users' exec-servers on the same host choose for themselves, so their
work is counted from /proc: every process of another account bound to part of the CPUs
(``Cpus_allowed_list`` in /proc/PID/status, readable by every account) counts on each CPU it
is bound to. That count is read again at most once a second, since a scan of /proc costs
about 20 µs a process. Kernel threads are left out: they are bound one per CPU and would
weigh every CPU alike.

A job asking for more cores than the exec-server may use is not pinned at all. Pinning is a
placement aid, not a limit: a job may widen its own affinity again (it is the user's own
process), as with ``taskset``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Hashable

RESCAN_S = 1.0   # how old the count of other processes' bindings may get
_KTHREADD = 2    # the parent of every kernel thread


def parse_cpu_list(text: str) -> set[int]:
    """``0-3,8,10-11`` (the kernel's list format) as a set of CPU numbers."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def bound_elsewhere(usable: frozenset[int], uid: int) -> Counter[int]:
    """For each usable CPU, how many processes of accounts other than ``uid`` (kernel threads
    aside) are bound to a part of ``usable`` that includes it."""
    counts: Counter[int] = Counter()
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == str(_KTHREADD):
            continue
        fields: dict[bytes, bytes] = {}
        try:
            with open(f"/proc/{name}/status", "rb") as file:
                for line in file:
                    key, _, value = line.partition(b":")
                    if key in (b"PPid", b"Uid", b"Cpus_allowed_list"):
                        fields[key] = value
                        if key == b"Cpus_allowed_list":
                            break
            if int(fields[b"PPid"]) == _KTHREADD or int(fields[b"Uid"].split()[0]) == uid:
                continue
            allowed = parse_cpu_list(fields[b"Cpus_allowed_list"].decode())
        except (OSError, KeyError, ValueError, IndexError):
            continue
        bound = allowed & usable
        if bound and bound != usable:
            counts.update(bound)
    return counts


class CpuPinner:
    """Chooses the CPUs of each job and remembers them until the job ends."""

    def __init__(self, usable: set[int] | None = None,
                 scan: Callable[[frozenset[int], int], Counter[int]] = bound_elsewhere,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.usable = frozenset(os.sched_getaffinity(0) if usable is None else usable)
        self._scan, self._clock = scan, clock
        self._held: dict[Hashable, tuple[int, ...]] = {}
        self._others: Counter[int] = Counter()
        self._scanned_at: float | None = None

    def choose(self, key: Hashable, cores: int) -> tuple[int, ...] | None:
        """The CPUs for job ``key`` with ``cores`` cores (held until ``release``), or None
        when it cannot be pinned (more cores than the exec-server may use)."""
        if cores > len(self.usable) or cores < 1:
            return None
        now = self._clock()
        if self._scanned_at is None or now - self._scanned_at >= RESCAN_S:
            self._others = self._scan(self.usable, os.geteuid())
            self._scanned_at = now
        load: Counter[int] = Counter(self._others)
        for cpus in self._held.values():
            load.update(cpus)
        chosen = tuple(sorted(sorted(self.usable, key=lambda cpu: (load[cpu], cpu))[:cores]))
        self._held[key] = chosen
        return chosen

    def release(self, key: Hashable) -> None:
        self._held.pop(key, None)

    def held(self) -> dict[Hashable, tuple[int, ...]]:
        return dict(self._held)

"""Memory limits of jobs (``hq-submit --memory``), enforced by the exec-server without root
and without killing honest jobs: each job's processes are measured by PSS
(``/proc/PID/smaps_rollup``), so pages that forked workers share count once, every
``INTERVAL_S``; a job over its limit is stopped (``kill``, the default), or only logged
(``warn``), or not looked at (``off``); ``[execd] memory_enforce`` in hq-server.cfg says which.
Every job's processes also get a higher ``oom_score_adj``, so that when the kernel must kill
something it picks a job before a daemon.

Without a delegated cgroup a job can grow faster than one interval; the kernel's OOM killer
stays the last line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

log = logging.getLogger(__name__)

INTERVAL_S = 0.5
JOB_OOM_SCORE_ADJ = 500
MODES = ("kill", "warn", "off")


def pss_kb(pids: Iterable[int]) -> int:
    """The proportional set size of these processes together, in KiB (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as file:
                for line in file:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue
    return total


def raise_oom_score(pid: int) -> None:
    """Make ``pid`` (and what it forks later) the kernel's first choice when memory runs out;
    raising it needs no privilege."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as file:
            file.write(str(JOB_OOM_SCORE_ADJ))
    except OSError as err:
        log.debug("pid %s: cannot raise oom_score_adj: %s", pid, err)


def size_text(kib: float) -> str:
    """``8 GiB``, ``8.4 GiB``, ``512 MiB``."""
    mib = kib / 1024
    if mib >= 1024:
        gib = mib / 1024
        return f"{gib:.0f} GiB" if gib == int(gib) else f"{gib:.1f} GiB"
    return f"{mib:.0f} MiB"


def over_limit_reason(limit_mb: int, used_kb: int) -> str:
    return f"memory limit {size_text(limit_mb * 1024)} exceeded: {size_text(used_kb)}"


def process_trees(pids: Iterable[int]) -> dict[int, list[int]]:
    """Each of ``pids`` with its descendants, from one scan of /proc (a racing exit just
    leaves one out): one scan per check, however many jobs have a limit."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as file:
                ppid = int(file.read().rpartition(b")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    trees = {}
    for pid in pids:
        tree, todo = [], [pid]
        while todo:
            current = todo.pop()
            tree.append(current)
            todo.extend(children.get(current, ()))
        trees[pid] = tree
    return trees

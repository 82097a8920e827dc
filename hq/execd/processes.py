"""Which processes belong to which job: the exec-server's view of /proc (reads only).

Every job's processes carry a marker in their environment, ``HQ_JOB_KEY=<installation>/
<database>/<job id>/<attempt>``, which they inherit from the job's shell whatever they do with
process groups and sessions (``setsid``, double forks). The exec-server is a child subreaper
(``PR_SET_CHILD_SUBREAPER``), so a job's orphans become its children instead of init's: at a
job's end, its orphans are found among the exec-server's own children; at a cancel, a time
limit or a lease kill, every process of the user that carries the marker is. A new
exec-server finds its predecessor's jobs the same way. Without a delegated cgroup (none on
these hosts) a process that wipes its environment and leaves its job's tree escapes this;
the docs say so.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

MARKER = "HQ_JOB_KEY"
_MARKER_BYTES = MARKER.encode() + b"="
_PR_SET_CHILD_SUBREAPER = 36


def marker_value(installation: str, database: str, job_id: int, attempt: int) -> str:
    return f"{installation}/{database}/{job_id}/{attempt}"


def parse_marker(value: str) -> tuple[str, tuple[str, int, int]] | None:
    """(installation, job key) of a marker; None when it is not one of ours."""
    parts = value.split("/")
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    return parts[0], (parts[1], int(parts[2]), int(parts[3]))


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux 3.4+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def own_children() -> set[int]:
    """The pids whose parent is this process (orphans a subreaper adopted included)."""
    children: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children", "rb") as file:
                children.update(int(pid) for pid in file.read().split())
        except OSError:
            continue
    return children


def marker_of(pid: int) -> str | None:
    """The job marker in ``pid``'s environment, if it is ours and has one."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            data = file.read()
    except OSError:
        return None
    for entry in data.split(b"\0"):
        if entry.startswith(_MARKER_BYTES):
            return entry[len(_MARKER_BYTES):].decode(errors="replace")
    return None


def marked_processes(installation: str) -> dict[int, str]:
    """Every live process of this account carrying a marker of ``installation``."""
    uid, found = os.geteuid(), {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid or _is_zombie(pid):
                continue
        except OSError:
            continue
        marker = marker_of(pid)
        if marker is not None and marker.startswith(installation + "/"):
            found[pid] = marker
    return found


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rpartition(b")")[2].split()[0] == b"Z"
    except OSError:
        return True


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    pgid: int
    started_at: float   # UTC seconds since the epoch


def process_info(pid: int) -> ProcessInfo | None:
    """pid, process group and start time of a live process (None when gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rpartition(b")")[2].split()
    except OSError:
        return None
    # after the command: state ppid pgrp session tty tpgid flags ... starttime is the 20th
    started_ticks = int(fields[19])
    return ProcessInfo(pid, int(fields[1]), int(fields[2]),
                       _boot_time() + started_ticks / _ticks())


def is_exec_server(pid: int) -> bool:
    """Whether ``pid`` is a live hq exec-server daemon (a job's shell's parent while it runs
    one; an orphaned job's shell has init, or this process, for its parent)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            argv = file.read().split(b"\0")
    except OSError:
        return False
    return b"hq.execd.main" in argv and b"--bridge" not in argv and pid != os.getpid()


def same_process(pid: int, started_at: float) -> bool:
    """Whether ``pid`` is still the process that started at ``started_at`` (no pid reuse)."""
    info = process_info(pid)
    return info is not None and abs(info.started_at - started_at) < 1.0


@cache
def _ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


@cache
def _boot_time() -> float:
    with open("/proc/stat", "rb") as file:
        for line in file:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("/proc/stat has no btime")


def leaders(processes: Iterable[int]) -> set[int]:
    """The process-group leaders among ``processes`` (a job's shell leads its group)."""
    return {pid for pid in processes if (info := process_info(pid)) and info.pgid == pid}

"""What a predecessor exec-server left running, and what becomes of each job.

A new exec-server (after a crash, an upgrade or an idle exit with jobs adopted elsewhere)
finds its predecessor's jobs by their markers in /proc (``hq.execd.processes``) and in the
journal of the starts it recorded. ``survey`` decides, before anything is served:
- a job still running whose lease holds is **adopted** (watched through a pidfd);
- a job whose lease ran out (a copy may be about to start elsewhere), or of which only
  leftovers remain (no leader), is **killed** and recorded ended;
- a job the journal says was started but that is gone is **lost**: recorded ended with its
  status unknown, never run again (it may well have run to its end).
The exec-server applies the verdicts (``ExecServer.take_over``); this module only reads.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from hq.execd import processes
from hq.execd.runner import JobKey


@dataclass(frozen=True)
class Adopt:
    key: JobKey
    pid: int
    started_at: float
    cores: int


@dataclass(frozen=True)
class Kill:
    key: JobKey
    pids: list[int]
    leader: int | None
    started_at: float | None
    lease_expired: bool     # else: only what it left behind is there


@dataclass(frozen=True)
class Lost:
    key: JobKey
    pid: int
    started_at: float


@dataclass
class Survey:
    adopt: list[Adopt] = field(default_factory=list)
    kill: list[Kill] = field(default_factory=list)
    lost: list[Lost] = field(default_factory=list)


def survey(installation: str, journaled: Mapping[JobKey, tuple[int, float, int]],
           known: Collection[JobKey], lease_expired: Callable[[JobKey], bool]) -> Survey:
    """The verdict on every job of ``installation`` found in /proc or in ``journaled`` (key
    -> pid, start, cores of the starts the predecessor recorded); keys in ``known`` (ended
    already, or running here) are left alone. ``lease_expired(key)`` says whether the lease
    of the key's database has run out."""
    found: dict[JobKey, list[int]] = {}
    for pid, marker in processes.marked_processes(installation).items():
        parsed = processes.parse_marker(marker)
        if parsed is not None:
            found.setdefault(parsed[1], []).append(pid)
    verdict = Survey()
    for key, pids in found.items():
        if key in known:
            continue
        if any(processes.is_exec_server(p.ppid) for pid in pids
               if (p := processes.process_info(pid)) is not None):
            continue   # another exec-server of ours runs it (our runtime directory was
            #            removed under it): its jobs are its own
        leader = next(iter(processes.leaders(pids)), None)
        info = processes.process_info(leader) if leader is not None else None
        expired = lease_expired(key)
        if info is None or expired:
            verdict.kill.append(Kill(key, pids, leader,
                                     None if info is None else info.started_at, expired))
        else:
            verdict.adopt.append(Adopt(key, info.pid, info.started_at,
                                       journaled.get(key, (0, 0.0, 1))[2]))
    for key, (pid, started_at, _cores) in journaled.items():
        if key not in found and key not in known:
            verdict.lost.append(Lost(key, pid, started_at))
    return verdict

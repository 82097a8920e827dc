"""What a host is doing, read from /proc: how busy its CPUs are, and how much of that is hq.

``Probe.sample`` compares two readings of /proc/stat: the CPU time all processes used in
between, in cores (1.0 = one core busy for the whole interval). hq's own share of it comes
from the CPU time of hq's daemons (processes running ``python -m hq.<daemon>``, visible to
every account in /proc/PID/cmdline and /proc/PID/stat) and of hq's jobs (the process trees
below the exec-servers, measured over the same interval, so that a job that ended a moment
ago still counts as hq's, not as someone else's). What remains is the host's *other work*
(someone typing, a job outside hq), the only load hq makes room for. No user's word enters
it: the probe runs as hq-server's account.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from hq.protocol.messages import HostFacts

_HQ_DAEMONS = (b"hq.server.main", b"hq.userd.main", b"hq.execd.main", b"hq.monitor.main")


def _cpu_seconds() -> float:
    """CPU time used by everything since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat", "rb") as file:
        fields = file.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _hq_seconds() -> tuple[dict[int, float], dict[int, float]]:
    """CPU seconds of each live hq daemon, and of the jobs under each exec-server, by pid.

    A job's CPU time is its process tree's: the exec-server's reaped children (``cutime``,
    ``cstime``: every job it has reaped, with what they reaped) plus the live processes below
    it. Both only grow, so the difference of two readings is what its jobs used in between,
    however short they were. /proc/PID/stat and cmdline are readable by every account."""
    ticks = os.sysconf("SC_CLK_TCK")
    daemons: dict[int, float] = {}
    execds: dict[int, float] = {}
    parent: dict[int, int] = {}
    used: dict[int, float] = {}   # own and reaped children's CPU seconds of every process
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open(f"/proc/{name}/stat", "rb") as file:
                fields = file.read().rpartition(b")")[2].split()
        except OSError:
            continue
        # after the command: ppid is the 2nd, utime, stime, cutime, cstime the 12th to 15th
        parent[pid] = int(fields[1])
        own = (int(fields[11]) + int(fields[12])) / ticks
        used[pid] = own + (int(fields[13]) + int(fields[14])) / ticks
        try:
            with open(f"/proc/{name}/cmdline", "rb") as file:
                cmdline = file.read(4096)
        except OSError:
            continue
        if any(daemon in cmdline for daemon in _HQ_DAEMONS):
            daemons[pid] = own
            if b"hq.execd.main" in cmdline and b"--bridge" not in cmdline:
                execds[pid] = used[pid] - own
    jobs = dict.fromkeys(execds, 0.0)
    for pid in used:
        ancestor, depth = parent.get(pid, 0), 0
        while ancestor > 1 and ancestor not in execds and depth < 64:
            ancestor, depth = parent.get(ancestor, 0), depth + 1
        if ancestor in execds:
            jobs[ancestor] += used[pid]
    for pid, reaped in execds.items():
        jobs[pid] += reaped
    return daemons, jobs


def _memory_mb() -> tuple[int, int]:
    values = {}
    with open("/proc/meminfo", "rb") as file:
        for line in file:
            key, _, rest = line.partition(b":")
            values[key] = int(rest.split()[0]) // 1024
    return values[b"MemTotal"], values.get(b"MemAvailable", values[b"MemFree"])


@dataclass
class Probe:
    """Successive readings of one host; ``sample`` is the facts since the last one."""

    cpu: float = 0.0
    daemons: dict[int, float] | None = None
    jobs: dict[int, float] | None = None
    at: float = 0.0
    gpus: int | None = None   # counted once: devices do not come and go while it runs

    def sample(self) -> HostFacts | None:
        """The host's facts since the previous call (None the first time: no interval)."""
        now, cpu, (daemons, jobs) = time.monotonic(), _cpu_seconds(), _hq_seconds()
        last_at, last_cpu, last_daemons, last_jobs = self.at, self.cpu, self.daemons, self.jobs
        self.at, self.cpu, self.daemons, self.jobs = now, cpu, daemons, jobs
        if last_daemons is None or last_jobs is None or now <= last_at:
            return None
        elapsed = now - last_at
        total, available = _memory_mb()
        if self.gpus is None:
            from hq.hardware import gpus

            self.gpus = len(gpus())
        return HostFacts(cores=os.cpu_count() or 1, cpu_busy=max(0.0, cpu - last_cpu) / elapsed,
                         hq_daemons=_growth(daemons, last_daemons) / elapsed,
                         hq_jobs=_growth(jobs, last_jobs) / elapsed,
                         load1=os.getloadavg()[0], memory_mb=total, free_memory_mb=available,
                         gpus=self.gpus)


def _growth(now: dict[int, float], before: dict[int, float]) -> float:
    """CPU seconds used between two readings by the processes present in both."""
    return sum(max(0.0, used - before[pid]) for pid, used in now.items() if pid in before)

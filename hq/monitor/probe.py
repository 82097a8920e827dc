"""What a host is doing, read from /proc: how busy its CPUs are, and how much of that is hq.

``Probe.sample`` compares two readings of /proc/stat: the CPU time all processes used in
between, in cores (1.0 = one core busy for the whole interval). hq's own share of it comes
from the CPU time of hq's daemons (processes running ``python -m hq.<daemon>``, visible to
every account in /proc/PID/cmdline and /proc/PID/stat); hq-server subtracts the cores its
jobs hold. What remains is the host's *other work* (someone typing, a job outside hq), the
only load hq makes room for. No user's word enters it: the probe runs as hq-server's
account.
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


def _hq_daemon_seconds() -> dict[int, float]:
    """CPU seconds of each live hq daemon process, by pid."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as file:
                cmdline = file.read(4096)
            if not any(daemon in cmdline for daemon in _HQ_DAEMONS):
                continue
            with open(f"/proc/{name}/stat", "rb") as file:
                fields = file.read().rpartition(b")")[2].split()
        except OSError:
            continue
        # after the command: utime and stime are the 12th and 13th
        found[int(name)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


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
    at: float = 0.0

    def sample(self) -> HostFacts | None:
        """The host's facts since the previous call (None the first time: no interval)."""
        now, cpu, daemons = time.monotonic(), _cpu_seconds(), _hq_daemon_seconds()
        last_at, last_cpu, last_daemons = self.at, self.cpu, self.daemons
        self.at, self.cpu, self.daemons = now, cpu, daemons
        if last_daemons is None or now <= last_at:
            return None
        elapsed = now - last_at
        hq_seconds = sum(max(0.0, used - last_daemons[pid]) for pid, used in daemons.items()
                         if pid in last_daemons)
        total, available = _memory_mb()
        return HostFacts(cores=os.cpu_count() or 1, cpu_busy=max(0.0, cpu - last_cpu) / elapsed,
                         hq_daemons=hq_seconds / elapsed, load1=os.getloadavg()[0],
                         memory_mb=total, free_memory_mb=available)

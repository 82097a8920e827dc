"""A host as hq-server sees it, and a user's exec-server on it: configuration, the admin's
switches, reachability, the monitor's facts and what hq's jobs use there. ``Cluster``
(``hq.server.state``) holds them and is the only code that changes their state.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from hq.protocol.messages import HostAddress
from hq.server.scheduler import HostSlot
from hq.states import HostState


@dataclass(slots=True, eq=False)
class Host:
    """A host as hq-server sees it now: configuration, admin switches, reachability, usage."""

    id: int
    name: str
    address: str
    ssh_port: int
    cores: int
    max_jobs: int | None
    memory_mb: int | None
    active: bool
    drained: bool
    drain_reason: str | None
    retired: bool = False
    drained_by: str | None = None
    drained_at: dt.datetime | None = None
    features: frozenset[str] = frozenset()
    gpus: tuple[str, ...] = ()           # its GPU device ids (etc/cluster.tab)
    gpu_holders: dict[str, int] = field(default_factory=dict)   # device -> job holding it
    state: HostState = HostState.UNKNOWN
    state_reason: str | None = None
    # facts from the host monitor (hq-server's own account; never from a user)
    load1: float | None = None
    free_memory_mb: int | None = None
    cpu_busy: float | None = None       # cores busy over the last report interval ...
    hq_daemons: float = 0.0             # ... of which hq's own daemons
    hq_jobs: float | None = None        # ... and hq's jobs (None: not measured)
    facts_at: float | None = None       # monotonic time of the last report
    detected: tuple[int, int, int | None] | None = None   # cores, memory MiB, GPUs found
    last_heartbeat_at: dt.datetime | None = None   # wall time of the last report
    recorded_heartbeat: dt.datetime | None = None  # the last one written to the database
    state_since: float = 0.0  # monotonic time of the last failure (or other state change)
    used_cores: int = 0
    used_memory_mb: int = 0
    jobs: set[int] = field(default_factory=set)

    def takes_jobs(self, now_m: float, retry_after_s: float) -> bool:
        """Whether a round may place jobs here at monotonic time ``now_m``."""
        if not self.active or self.drained or self.retired:
            return False
        if self.state in (HostState.UNREACHABLE, HostState.HEARTBEAT_LOST):
            # try again now and then: the next dispatch is the probe that finds it back
            return now_m - self.state_since > retry_after_s
        return self.state in (HostState.UP, HostState.UNKNOWN)

    def other_work(self, now_m: float, facts_timeout_s: float) -> float | None:
        """Cores busy with work that is not hq's: what the monitor saw busy, less hq's
        daemons and hq's jobs over the same interval (at most what was busy); None when the
        monitor has not reported for ``facts_timeout_s``.

        hq's jobs are what the monitor measured of the exec-servers' process trees; from a
        monitor that does not measure them, the cores hq's jobs hold now stand in (which
        counts the work of jobs that ended within the interval as someone else's)."""
        if self.cpu_busy is None or self.facts_at is None \
                or now_m - self.facts_at > facts_timeout_s:
            return None
        jobs = self.used_cores if self.hq_jobs is None else self.hq_jobs
        return min(self.cpu_busy, max(0.0, self.cpu_busy - self.hq_daemons - jobs))

    def slot(self, now_m: float, facts_timeout_s: float) -> HostSlot:
        free_memory = None if self.memory_mb is None else self.memory_mb - self.used_memory_mb
        return HostSlot(name=self.name, cores=self.cores,
                        free_cores=self.cores - self.used_cores, max_jobs=self.max_jobs,
                        running_jobs=len(self.jobs), memory_mb=self.memory_mb,
                        free_memory_mb=free_memory,
                        other_work=self.other_work(now_m, facts_timeout_s),
                        gpus=len(self.gpus), free_gpus=len(self.gpus) - len(self.gpu_holders))

    def free_gpus(self, count: int) -> str:
        """``count`` devices no job holds, in the host's order, as a job's gpu_ids."""
        free = [g for g in self.gpus if g not in self.gpu_holders]
        if len(free) < count:
            raise ValueError(f"host {self.name}: {count} GPUs asked, {len(free)} free")
        return ",".join(free[:count])

    def display(self) -> str:
        """The state an admin reads: the admin's switches first (a draining host still runs
        jobs, a drained one runs none), then reachability."""
        if self.drained:
            return "draining" if self.jobs else "drained"
        if not self.active:
            return "inactive"
        return str(self.state)

    def display_reason(self) -> str | None:
        """Why it is in that state: the drain reason first, then reachability's."""
        if self.drained:
            return f"drained: {self.drain_reason or 'no reason given'}"
        return self.state_reason

    def address_info(self) -> HostAddress:
        return HostAddress(name=self.name, address=self.address, ssh_port=self.ssh_port)


@dataclass(slots=True)
class ExecServerView:
    """A user's exec-server on a host, as its user-server last reported it."""

    pid: int | None
    state: str
    since: dt.datetime
    reason: str | None = None

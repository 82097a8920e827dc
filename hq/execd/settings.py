"""The exec-server's settings: what the controlling user-server's hello may set."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hq.protocol.messages import ExecSettings


@dataclass(frozen=True)
class Settings:
    """What the user-server's hello may set; the newest controller's values apply."""

    idle_timeout_s: float = 300.0
    lease_s: float | None = None  # no user-server contact this long: kill the jobs (§6)
    heartbeat_interval_s: float = 2.0
    database: str = ""            # the controller's database ("": one of protocol 1)
    memory_enforce: str = "kill"  # a job over its --memory: kill, warn or off
    pin_cpus: bool = False        # bind each job to CPUs of its own (hq.execd.pinning)

    def updated(self, given: ExecSettings | None) -> Settings:
        """These settings with a hello's (already type- and range-checked) ones applied."""
        if given is None:
            return replace(self, database="")
        values = {name: getattr(given, name) for name in ("idle_timeout_s", "lease_s",
                                                           "heartbeat_interval_s",
                                                           "memory_enforce", "pin_cpus")
                  if getattr(given, name) is not None}
        return replace(self, **values, database=given.database or "")


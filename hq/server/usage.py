"""Fair share with history: each user's usage, in core-seconds of finished jobs, decaying
with a half-life (``[scheduler] fairshare_half_life``, 7 days by default) and kept in the
database (``user_usage``), so that a restart of hq-server does not forgive yesterday's heavy
user. The scheduler's fair-share key of a user is that decayed usage plus
``RUNNING_CORE_S`` for each core their jobs hold now: among users competing for the same
hosts, the one with less goes first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

RUNNING_CORE_S = 3600.0   # a core held now weighs like an hour of one core used
DEFAULT_HALF_LIFE_S = 7 * 86400.0


@dataclass
class Usage:
    """Decayed core-seconds per user, as of a wall time each."""

    half_life_s: float = DEFAULT_HALF_LIFE_S
    values: dict[str, tuple[float, float]] = field(default_factory=dict)  # user -> (s, at)
    changed: set[str] = field(default_factory=set)

    def of(self, user: str, now: float) -> float:
        value, at = self.values.get(user, (0.0, now))
        return value * math.pow(0.5, max(0.0, now - at) / self.half_life_s)

    def add(self, user: str, core_s: float, now: float) -> None:
        if core_s > 0:
            self.values[user] = (self.of(user, now) + core_s, now)
            self.changed.add(user)

    def load(self, rows: Iterable[tuple[str, float, float]]) -> None:
        for user, value, at in rows:
            self.values[user] = (value, at)

    def take_changed(self) -> list[tuple[str, float, float]]:
        """(user, core-seconds, as of) of the users whose usage changed since last asked."""
        rows = [(u, *self.values[u]) for u in sorted(self.changed)]
        self.changed.clear()
        return rows

    def keys(self, running_cores: Mapping[str, int], now: float,
             shares: Mapping[str, float] | None = None) -> dict[str, float]:
        """The scheduler's fair-share key per user: decayed usage + the cores held now, over
        the user's share (etc/users share=2: twice as much before others go first)."""
        keys = {user: self.of(user, now) for user in self.values}
        for user, cores in running_cores.items():
            keys[user] = keys.get(user, 0.0) + cores * RUNNING_CORE_S
        if shares:
            keys = {user: value / shares.get(user, 1.0) for user, value in keys.items()}
        return keys

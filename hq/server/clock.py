"""hq-server's time, in one seam: wall-clock UTC for records, monotonic for timeouts.

Everything in hq-server that asks what time it is asks a ``Clock``; the tests hand in one they
step by hand, so heartbeat and lease logic is tested without sleeping.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The time to record (aware, UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps, for timeouts and silences."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()

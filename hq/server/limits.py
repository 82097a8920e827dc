"""What one account may cost hq-server before and after it is identified.

Before a peer says who it is, a connection may cost only a small, fixed amount: a short
hello (``HELLO_MAX_FRAME``), within ``HELLO_TIMEOUT_S``, and at most
``max_connections_per_user`` open connections per uid (the uid is known from the kernel at
accept, before a byte is read). After it, each user's requests are metered by a token bucket
(``requests_per_second``, ``request_burst``): one user's storm of requests is refused with
``busy`` and cannot stall the others.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)

HELLO_MAX_FRAME = 64 * 1024
HELLO_TIMEOUT_S = 10.0
ADMIN_MAX_FRAME = 1024 * 1024
REFUSAL_LOG_S = 10.0


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take`` spends one."""

    rate: float
    burst: int
    tokens: float
    at: float

    @classmethod
    def full(cls, rate: float, burst: int, now: float) -> TokenBucket:
        return cls(rate, burst, float(burst), now)

    def take(self, now: float) -> bool:
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class ConnectionCounter:
    """Open connections per uid, with refusals logged at most every REFUSAL_LOG_S."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[int] = Counter()
        self._refused: Counter[int] = Counter()
        self._logged_at: dict[int, float] = {}

    def admit(self, uid: int, now: float) -> bool:
        if self.open[uid] >= self.limit:
            self._refused[uid] += 1
            if now - self._logged_at.get(uid, -REFUSAL_LOG_S) >= REFUSAL_LOG_S:
                log.warning("uid %d: %d connection(s) refused: %d are open, the limit is %d "
                            "([server] max_connections_per_user)", uid, self._refused[uid],
                            self.open[uid], self.limit)
                self._logged_at[uid] = now
                self._refused[uid] = 0
            return False
        self.open[uid] += 1
        return True

    def closed(self, uid: int) -> None:
        self.open[uid] -= 1
        if self.open[uid] <= 0:
            del self.open[uid]

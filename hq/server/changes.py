"""hq-server's change counter: what a dashboard's long poll (``Watch``) waits on.

Every change the journal records (a job's state or reason, a submission, a host switch or
state) bumps it. A bump is an addition and, only when someone waits, one event set: it sits
on the path of thousands of job changes a second.
"""

from __future__ import annotations

import asyncio
import contextlib


class ChangeCounter:
    """A number that grows with every recorded change, and a way to wait for the next."""

    def __init__(self) -> None:
        self.value = 1   # a first watch (since 0) is answered at once
        self._next: asyncio.Event | None = None

    def bump(self) -> None:
        self.value += 1
        if self._next is not None:
            self._next.set()
            self._next = None

    async def next_change(self, timeout_s: float) -> bool:
        """Wait for the next bump, at most ``timeout_s``; False when none came."""
        if self._next is None:
            self._next = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._next.wait(), timeout_s)
            return True
        return False

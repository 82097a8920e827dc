"""Job events on their way to the controlling user-server, in batches.

The first event waits ``BATCH_DELAY_S`` for company (the starts and ends of a burst of short
jobs go in one ``job_events`` message instead of one each); a batch goes as soon as it holds
``BATCH_MAX``. Without a controller nothing is queued: the exec-server's view (running and
unacknowledged ends) is what the next controller's ``sync`` gets, so a queue would only
repeat it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hq.protocol import Channel
from hq.protocol.messages import JobEvent, JobEvents

BATCH_MAX = 1000        # events per job_events message
BATCH_DELAY_S = 0.001   # how long the first queued event waits for company


class EventBatch:
    """``emit`` events to the channel ``controller()`` returns (None: no controller);
    ``before_send`` runs before each batch goes (the journal's flush: a start is on disk
    before anyone hears of it, so a successor knows it ran)."""

    def __init__(self, controller: Callable[[], Channel | None],
                 before_send: Callable[[], None]) -> None:
        self._controller, self._before_send = controller, before_send
        self._queue: list[JobEvent] = []
        self._timer: asyncio.TimerHandle | None = None

    def emit(self, event: JobEvent) -> None:
        if self._controller() is None:
            return
        self._queue.append(event)
        if len(self._queue) >= BATCH_MAX:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(BATCH_DELAY_S, self.flush)

    def flush(self) -> None:
        self._cancel_timer()
        controller = self._controller()
        if self._queue and controller is not None:
            self._before_send()
            controller.send(JobEvents(events=self._queue))
        self._queue = []

    def drop(self) -> None:
        """Forget what is queued (the controller changed: the new one asks with sync)."""
        self._cancel_timer()
        self._queue = []

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

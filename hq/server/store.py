"""The database writer of hq-server: one thread, batched transactions, acknowledged commits.

Everything hq-server records goes through ``Store.write``: the work is queued, the thread
gathers whatever is queued within ``flush_interval`` (up to ``batch_max`` items) and runs it
all in one transaction, then resolves each item's future on the event loop. A change is
acknowledged only after it committed.

When the database is unreachable the thread keeps retrying state changes with backoff (they
must be recorded eventually), while new work that can wait for nobody (a submission) is
refused at once with the reason, so hq never accepts work it cannot record.

Reads (``Store.read``: finished jobs for a listing, ``show`` of an old job) run on a thread
and connection of their own, so that a user's large read never holds up the writes that
everyone's jobs wait for. They only ever look for what has committed already: hq-server
keeps every job in memory until its end has committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc

from hq.db.engine import read_connection, run_in_transaction
from hq.errors import DatabaseError

log = logging.getLogger(__name__)

Work = Callable[[sa.Connection], Any]


@dataclass(eq=False)
class _Item:
    work: Work
    future: asyncio.Future[Any]
    refuse_when_down: bool
    what: str


class Store:
    """Runs database work on its own thread, in batches, and reports commits to the loop."""

    def __init__(self, engine: sa.Engine, loop: asyncio.AbstractEventLoop, *,
                 flush_interval: float, batch_max: int) -> None:
        self.engine, self.loop = engine, loop
        self.flush_interval, self.batch_max = flush_interval, batch_max
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="hq-db-writer", daemon=True)
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hq-db-reader")
        self.down_reason: str | None = None

    def start(self) -> None:
        self._thread.start()

    def write(self, work: Work, *, what: str, refuse_when_down: bool = False,
              ) -> asyncio.Future[Any]:
        """Queue ``work(conn)`` for the next batch; the future resolves after the commit."""
        future = self.loop.create_future()
        if refuse_when_down and self.down_reason is not None:
            future.set_exception(DatabaseError(
                f"the database is unreachable, so hq accepts no new work now: "
                f"{self.down_reason}"))
            return future
        self._queue.put(_Item(work, future, refuse_when_down, what))
        return future

    async def read(self, work: Work, *, what: str) -> Any:
        """Run a query on the reader thread (never behind the writes); DatabaseError with
        one line when the database cannot be read."""
        if self.down_reason is not None:
            raise DatabaseError(f"the database is unreachable: {self.down_reason}")
        return await self.loop.run_in_executor(self._reader, self._read, work, what)

    def _read(self, work: Work, what: str) -> Any:
        try:
            with read_connection(self.engine) as conn:
                return work(conn)
        except exc.DBAPIError as err:
            reason = " ".join(str(err.orig).split())[:300]
            raise DatabaseError(f"{what}: the database cannot be read: {reason}") from None

    def stop(self, timeout: float = 30.0) -> None:
        """Flush what is queued, then end the threads."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._reader.shutdown(wait=True, cancel_futures=True)

    # --- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + self.flush_interval
            while len(batch) < self.batch_max:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._commit_batch(batch)

    def _commit_batch(self, batch: list[_Item]) -> None:
        delay = 0.5
        while batch:
            try:
                items = list(batch)
                results = run_in_transaction(
                    self.engine, lambda conn, items=items: [i.work(conn) for i in items],
                    what=f"batch of {len(items)}")
            except exc.DBAPIError as err:
                if not _is_connection_error(err):
                    self._isolate_failures(batch)
                    return
                reason = " ".join(str(err.orig).split())[:300]
                if self.down_reason is None:
                    log.error("database: unreachable, retrying with backoff: %s", reason)
                self.down_reason = reason
                for item in [i for i in batch if i.refuse_when_down]:
                    self._resolve(item, error=DatabaseError(
                        f"the database is unreachable: {reason}"))
                batch = [i for i in batch if not i.refuse_when_down]
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            except Exception as err:  # a bug in one item: find it, keep the others
                log.exception("database: batch of %d failed: %s", len(batch), err)
                self._isolate_failures(batch)
                return
            if self.down_reason is not None:
                log.warning("database: reachable again")
                self.down_reason = None
            for item, result in zip(batch, results, strict=True):
                self._resolve(item, result=result)
            return

    def _isolate_failures(self, batch: list[_Item]) -> None:
        """Run each item alone so one bad item cannot lose the others' changes."""
        for item in batch:
            try:
                result = run_in_transaction(self.engine, item.work, what=item.what)
            except Exception as err:
                log.exception("database: %s failed", item.what)
                self._resolve(item, error=DatabaseError(f"{item.what} failed: {err}"))
            else:
                self._resolve(item, result=result)

    def _resolve(self, item: _Item, *, result: Any = None,
                 error: BaseException | None = None) -> None:
        def done() -> None:
            if item.future.done():
                return
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(result)

        self.loop.call_soon_threadsafe(done)


def _is_connection_error(err: exc.DBAPIError) -> bool:
    if err.connection_invalidated or isinstance(err, exc.OperationalError):
        args = getattr(err.orig, "args", ())
        # 1213 deadlock and 1205 lock wait are retried inside run_in_transaction already;
        # here an OperationalError means the server cannot be used at all.
        return not (args and args[0] in (1213, 1205))
    return False

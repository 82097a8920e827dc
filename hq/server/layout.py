"""Laying out a big array's elements after the array is accepted.

An array signed as a whole (one spec with ``array_indexes``) is accepted, and durable, once
its submission row and its first ``LAID_OUT_AT_SUBMIT`` elements have committed. That bounds
what ``hq-submit --array 1-1000000`` waits for: storing a row costs SQLite about 37 µs, so
a million of them in the submit's own transaction would take most of a minute. The other
elements are then stored ``CHUNK`` at a time, in transactions of their own, and join the
queue as each one commits, in id order, so the queue's head is always laid out first.

Until an array is laid out, the elements not stored yet count as pending (or held) in every
count: quotas, ``hq-client status``, the folded ``hq-client jobs`` and an array's end. A
request that names jobs one by one waits until they are stored, so that it never meets an
element that exists only as a number: one that looks (show, wait) only while one of them
is still to be stored, one that changes or lists them (cancel, hold, release, an expanded
listing, ``--dependency``, resubmit) until all its caller's arrays are laid out. After
``SETTLE_S`` it is answered "still being stored, try again" instead (a million elements
take about a minute). So nothing changes an element by itself while its array is laid
out; only a change of the whole array (``hq-client cancel 42_*``, hold, release) reaches
them: they are stored in its new state from then on (``Layouts.change_tail``), and a
cancelled one ends its submission only once it is stored. So after a restart the ones still
missing are laid out in the state their laid-out siblings were given: cancelled if any of
them was cancelled, else held if any of them is held, else pending. (A cancel that found
every stored element running, and a restart before any of them ended, is the one case this
cannot see: the rest is then laid out pending.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import msgspec
import sqlalchemy as sa

from hq import array_indexes
from hq.db.jobs import cancelled_element, find_job, finished_counts, unlaid_arrays
from hq.errors import Busy
from hq.job import Job, Submission
from hq.jobspec import JobSpec
from hq.server.journal import Journal
from hq.server.state import Cluster
from hq.states import JobState

log = logging.getLogger(__name__)

# elements stored with the submission itself: the queue's first heads, and what the
# submit waits for (about 40 ms on SQLite)
LAID_OUT_AT_SUBMIT = 1_000
# elements per later transaction: short enough that other users' state changes, which
# share the database writer, wait at most about as long as for a submit
CHUNK = 5_000
# how long a request naming jobs waits for its caller's arrays to be stored before it is
# answered Busy: below the 30 s a user-server waits for hq-server's answer
SETTLE_S = 20.0


@dataclass(eq=False)
class Layout:
    """An accepted array whose elements are not all stored yet."""

    sub: Submission
    owner_id: int
    template: JobSpec        # the array's spec: its index set, no index of its own
    indexes: list[int]       # the whole array's indexes, in id order
    state: JobState          # the elements not laid out yet are pending, held or cancelled
    laid_out: int            # elements stored so far (the first ones, in id order)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None            # cancelled: why, and when
    ended_at: dt.datetime | None = None

    @property
    def tail(self) -> int:
        """Elements accepted and not stored yet."""
        return len(self.indexes) - self.laid_out

    def stores_any(self, ids: Collection[int]) -> bool:
        """Whether one of ``ids`` is a job of this array not stored yet."""
        first = self.sub.first_job_id or 0
        start, stop = first + self.laid_out, first + len(self.indexes)
        return any(start <= job_id < stop for job_id in ids)

    def elements(self, start: int, stop: int) -> list[Job]:
        """The array's elements from position ``start`` to ``stop`` (exclusive), as new
        jobs: ids are the array's first job id plus the position."""
        sub, first = self.sub, self.sub.first_job_id or 0
        waits = self.state is JobState.PENDING
        specs = self.template.elements(self.indexes[start:stop])
        return [Job(id=job_id, submission_id=sub.id, owner=sub.owner, owner_id=self.owner_id,
                    spec=spec, submitted_at=sub.submitted_at,   # type: ignore[arg-type]
                    state=self.state, eligible_at=sub.submitted_at if waits else None,
                    reason=self.reason, ended_at=self.ended_at, array_id=first)
                for job_id, spec in enumerate(specs, first + start)]


class Layouts:
    """The arrays being laid out, and the task that lays out each one."""

    def __init__(self, cluster: Cluster, journal: Journal, wake: Callable[[], None]) -> None:
        self.cluster, self.journal = cluster, journal
        self.wake = wake   # the scheduler's: a chunk joined the queue
        self.running: dict[int, Layout] = {}   # submission id -> its layout
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, layout: Layout) -> None:
        """Count ``layout``'s tail as its owner's jobs now, and lay it out from here on."""
        sub = layout.sub
        self.cluster.expect_jobs(sub, layout.state, layout.tail)
        self.running[sub.id] = layout
        task = asyncio.get_running_loop().create_task(self._lay_out(layout),
                                                      name=f"layout of array {sub.first_job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lay_out(self, layout: Layout) -> None:
        sub = layout.sub
        try:
            while layout.tail:
                chunk = layout.elements(layout.laid_out, layout.laid_out + CHUNK)
                await self.journal.elements(sub, chunk)
                changed = layout.state is not chunk[0].state
                if changed:   # changed whole while this chunk was being written
                    self.cluster.retarget_expected(sub, layout.state, chunk[0].state,
                                                   len(chunk))
                for ended in self.cluster.add_expected(chunk):
                    self.journal.ended(ended)
                if changed:
                    for job in chunk:
                        self._change(job, layout)
                layout.laid_out += len(chunk)
                self.wake()
            log.info("array %s of %s: its %d elements laid out", sub.first_job_id,
                     sub.owner, layout.laid_out)
        except Exception:
            # the rest stays accepted and is laid out at the next start; the waiters are
            # let go (their requests see the laid-out part)
            log.exception("array %s: laying out its elements failed at %d of %d",
                          sub.first_job_id, layout.laid_out, len(layout.indexes))
        finally:   # also when hq-server stops (cancelled): the next start lays out the rest
            self.running.pop(sub.id, None)
            layout.done.set()

    def change_tail(self, layout: Layout, new: JobState, reason: str | None = None) -> int:
        """An array held, released or cancelled whole while it is laid out: its elements
        not stored yet are stored in state ``new`` (a cancelled one with ``reason``), and
        counted so from now on. Returns how many changed (0: they already were)."""
        old = layout.state
        if old is new or old.finished:
            return 0
        self.cluster.retarget_expected(layout.sub, old, new, layout.tail)
        layout.state = new
        log.info("array %s of %s: its %d jobs not stored yet are %s now", layout.sub.first_job_id,
                 layout.sub.owner, layout.tail, new)
        if new.finished:
            layout.reason, layout.ended_at = reason, self.journal.clock.now()
        return layout.tail

    def _change(self, job: Job, layout: Layout) -> None:
        """A stored element of ``layout`` in the state its tail had: into the tail's now."""
        new = layout.state
        if new.finished:
            self.journal.job(job, new, reason=layout.reason, ended_at=layout.ended_at)
        elif new is JobState.PENDING:
            self.journal.job(job, new, eligible_at=self.journal.clock.now())
        else:
            self.journal.job(job, new)

    async def settled(self, owner: str | None, timeout_s: float = SETTLE_S,
                      ids: Collection[int] | None = None) -> None:
        """Return once ``owner``'s arrays (everyone's with None) are all laid out, or with
        ``ids``, the arrays that have one of those jobs still to store; Busy, saying how far
        the layout is, when that takes more than ``timeout_s``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            waiting = [layout for layout in self.running.values()
                       if (owner is None or layout.sub.owner == owner)
                       and (ids is None or layout.stores_any(ids))]
            if not waiting:
                return
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.gather(*(layout.done.wait() for layout in waiting))
            except TimeoutError:
                slowest = min(waiting, key=lambda layout: layout.laid_out / len(layout.indexes))
                raise Busy(f"array {slowest.sub.first_job_id} is still being stored "
                           f"({slowest.laid_out:,} of its {len(slowest.indexes):,} jobs so "
                           "far): try again in a moment") from None

    def tails_of(self, owner: str) -> dict[int, Layout]:
        """``owner``'s arrays being laid out, by their array id."""
        return {layout.sub.first_job_id or 0: layout for layout in self.running.values()
                if layout.sub.owner == owner}

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def resume(self, conn: sa.Connection) -> None:
        """At start: lay out the rest of every array accepted before and not laid out."""
        cluster = self.cluster
        for sub, owner_id, stored in unlaid_arrays(conn):
            if sub.id not in cluster.submissions:   # its stored jobs all ended
                sub.finished.update(finished_counts(conn, [sub.id]).get(sub.id, {}))
                cluster.add_submission(sub)
            sub = cluster.submissions[sub.id]
            one = find_job(conn, (sub.first_job_id or 0) + stored - 1)
            if one is None or not sub.array_indexes:
                log.error("array %s: %d of its %d elements stored, and the last of them not "
                          "found: not laid out", sub.first_job_id, stored, sub.job_count)
                continue
            held = any(job.state is JobState.HELD
                       for job in cluster.unfinished_by_owner.get(sub.owner, {}).values()
                       if job.submission_id == sub.id)
            # a stored element cancelled: only a whole-array cancel does that while an array
            # is laid out (a change by id waits for the layout), and it cancelled the rest
            cancelled = cancelled_element(conn, sub.id)
            template = msgspec.structs.replace(one.spec, array_index=None)
            self.start(Layout(sub=sub, owner_id=owner_id, template=template,
                              indexes=array_indexes.expand(sub.array_indexes),
                              state=JobState.CANCELLED if cancelled
                              else JobState.HELD if held else JobState.PENDING,
                              laid_out=stored, reason=cancelled and cancelled.reason,
                              ended_at=cancelled and cancelled.ended_at))

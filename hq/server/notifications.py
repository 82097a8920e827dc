"""Telling a user that all jobs of a submission have ended (``hq-submit --notify CMD``,
``--mail-user``): hq-server says so to the owner's user-server, which runs the command as the
user on the head node (or mails), after checking that it signed what hq-server hands back.

The message goes out after the last end is committed, with the submission's counts per state
from the database; a user-server that is not connected gets it when it connects, and one
that was not told before hq-server stopped is told after the next start (``notified_at``
stays empty until then). It is told at most once.
"""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa

from hq.db.jobs import mark_notified, submission_counts, unnotified_submissions
from hq.job import Submission
from hq.protocol.messages import SubmissionEnded
from hq.server.clock import Clock
from hq.server.journal import Journal
from hq.server.links import Links
from hq.server.store import Store

log = logging.getLogger(__name__)


class Notifier:
    """The notifications due, and who is waiting for them."""

    def __init__(self, journal: Journal, store: Store, links: Links, clock: Clock,
                 database: str) -> None:
        self.journal, self.store, self.links, self.clock = journal, store, links, clock
        self.database = database
        self.waiting: dict[str, list[SubmissionEnded]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        journal.submission_ended = self.ended

    def ended(self, sub: Submission) -> None:
        """The last job of ``sub`` ended (called by the journal, in memory, before commit)."""
        if sub.notify or sub.mail_user:
            task = asyncio.ensure_future(self._tell(sub))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _tell(self, sub: Submission) -> None:
        try:
            await self.journal.committed()
            counts = await self.store.read(lambda conn: submission_counts(conn, sub.id),
                                           what=f"the jobs of submission {sub.id}")
        except Exception:
            log.exception("submission %s: cannot tell its owner that it ended", sub.id)
            return
        self._send(sub.owner, self._message(sub, counts))

    def _message(self, sub: Submission, counts: dict[str, int]) -> SubmissionEnded:
        return SubmissionEnded(submission_id=sub.id, array_id=sub.first_job_id or sub.id,
                               counts=counts, notify=sub.notify, mail_user=sub.mail_user,
                               mail_type=sub.mail_type, signature=sub.notify_signature,
                               database=self.database)

    def _send(self, owner: str, message: SubmissionEnded) -> None:
        if not self.links.send(owner, message):
            self.waiting.setdefault(owner, []).append(message)
            return
        log.info("submission %s: told %s that all its jobs ended", message.submission_id,
                 owner)
        at = self.clock.now()
        self.store.write(lambda conn: mark_notified(conn, message.submission_id, at),
                         what=f"submission {message.submission_id} notified")

    def connected(self, owner: str) -> None:
        """``owner``'s user-server connected: what it missed."""
        for message in self.waiting.pop(owner, []):
            self._send(owner, message)

    def load(self, conn: sa.Connection) -> None:
        """At start: the submissions that ended while nobody was told."""
        for sub, counts in unnotified_submissions(conn):
            self.waiting.setdefault(sub.owner, []).append(self._message(sub, counts))

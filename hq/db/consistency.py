"""Consistency between tables: every job row must agree with the last event of that job.

hq-server writes a job's row change and its event in the same transaction, so they can only
disagree through a bug or a hand edit; ``hq-dbadmin check`` looks for both kinds of damage.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from hq.db.model import events, jobs
from hq.states import FINISHED_JOB_STATES, EventKind, JobState

# States a job may hold without any event of its own: the submission's one event names only
# the first job of a submission.
_STATES_WITHOUT_EVENT = (JobState.PENDING, JobState.HELD)


@dataclass(frozen=True)
class JobRowMismatch:
    """A job row that disagrees with the event log (or with itself)."""

    job_id: int
    row_state: JobState
    event_state: str | None        # the last event's new state; None: no event at all
    event_at: dt.datetime | None
    ended_at: dt.datetime | None

    def describe(self) -> str:
        if self.event_state is None:
            return f"job {self.job_id}: row says {self.row_state}, but no event records it"
        if self.event_state != self.row_state:
            at = "" if self.event_at is None else f" ({self.event_at:%Y-%m-%d %H:%M:%S} UTC)"
            return (f"job {self.job_id}: row says {self.row_state}, its last event{at} says "
                    f"{self.event_state}")
        if self.ended_at is None:
            return f"job {self.job_id}: row says {self.row_state} but has no end time"
        return f"job {self.job_id}: row says {self.row_state} but has an end time"


def _mismatch_condition(event: sa.Alias) -> sa.ColumnElement[bool]:
    finished = list(FINISHED_JOB_STATES)
    return sa.or_(
        sa.and_(event.c.id.is_(None), jobs.c.state.not_in(_STATES_WITHOUT_EVENT)),
        # both columns hold the state words, so they compare as text on both backends
        sa.and_(event.c.id.is_not(None), event.c.new_state != jobs.c.state),
        sa.and_(jobs.c.state.in_(finished), jobs.c.ended_at.is_(None)),
        sa.and_(jobs.c.state.not_in(finished), jobs.c.ended_at.is_not(None)),
    )


def _joined() -> tuple[sa.Alias, sa.FromClause]:
    last = (sa.select(events.c.job_id, sa.func.max(events.c.id).label("last_id"))
            .where(events.c.kind == EventKind.JOB, events.c.job_id.is_not(None),
                   events.c.new_state.is_not(None))
            .group_by(events.c.job_id).subquery("last_job_event"))
    event = events.alias("last_event")
    joined = (jobs.outerjoin(last, last.c.job_id == jobs.c.id)
              .outerjoin(event, event.c.id == last.c.last_id))
    return event, joined


def job_row_mismatches(conn: sa.Connection, *, limit: int = 100,
                       ) -> tuple[list[JobRowMismatch], int]:
    """Up to ``limit`` job rows that disagree with their last event, and how many there are.

    A row disagrees when its state differs from the last event's new state, when it is
    finished without an end time or unfinished with one, or when it is past ``held`` without
    any event of its own.
    """
    event, joined = _joined()
    condition = _mismatch_condition(event)
    total = conn.execute(sa.select(sa.func.count()).select_from(joined).where(condition)
                         ).scalar_one()
    if not total:
        return [], 0
    query = (sa.select(jobs.c.id, jobs.c.state, jobs.c.ended_at, event.c.new_state,
                       event.c.at).select_from(joined).where(condition)
             .order_by(jobs.c.id).limit(limit))
    found = [JobRowMismatch(job_id=r.id, row_state=r.state, event_state=r.new_state,
                            event_at=r.at, ended_at=r.ended_at) for r in conn.execute(query)]
    return found, int(total)

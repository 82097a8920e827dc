"""The append-only event log: job transitions, host events, configuration changes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import sqlalchemy as sa

from hq.db.model import events
from hq.states import EventKind


@dataclass(frozen=True)
class Event:
    """One row of the event log, before or after it was written."""

    at: dt.datetime
    kind: EventKind
    message: str
    job_id: int | None = None
    host_name: str | None = None
    user_name: str | None = None
    old_state: str | None = None
    new_state: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class ConfigChange:
    """A change made by loading a configuration file, e.g. ``host node3: cores 4 -> 8``."""

    kind: EventKind
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.detail}"

    def to_event(self, at: dt.datetime) -> Event:
        return Event(at=at, kind=self.kind, message=str(self),
                     host_name=self.name if self.kind is EventKind.HOST else None,
                     user_name=self.name if self.kind is EventKind.USER else None)


def record_events(conn: sa.Connection, batch: Sequence[Event]) -> None:
    """Append ``batch`` in one statement (the caller's transaction)."""
    if batch:
        rows = [{k: v for k, v in asdict(e).items() if k != "id"} for e in batch]
        conn.execute(sa.insert(events), rows)

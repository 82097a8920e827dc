"""The append-only event log: job transitions, host events, configuration changes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, fields
from operator import attrgetter

import sqlalchemy as sa

from hq.db.engine import execute_many
from hq.db.model import events
from hq.states import EventKind


@dataclass(frozen=True, slots=True)
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


_COLUMNS = [f.name for f in fields(Event) if f.name != "id"]
_values = attrgetter(*_COLUMNS)


def record_events(conn: sa.Connection, batch: Sequence[Event]) -> None:
    """Append ``batch`` in one statement (the caller's transaction)."""
    if batch:
        # by hand, not dataclasses.asdict: that deep-copies every value, row after row
        rows = [dict(zip(_COLUMNS, _values(e), strict=True)) for e in batch]
        execute_many(conn, "insert events", lambda: sa.insert(events).values(
            {c: sa.bindparam(c, type_=events.c[c].type) for c in _COLUMNS}), rows)


def host_events(conn: sa.Connection, host: str, limit: int) -> list[Event]:
    """The newest ``limit`` events about ``host``, oldest first (served by (host_name, at))."""
    query = (sa.select(events).where(events.c.host_name == host, events.c.job_id.is_(None))
             .order_by(events.c.at.desc(), events.c.id.desc()).limit(limit))
    rows = list(conn.execute(query).mappings())
    return [Event(**{c: row[c] for c in _COLUMNS}) for row in reversed(rows)]

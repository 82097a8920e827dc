"""Cluster-wide settings that must survive a restart (for example: is the cluster active)."""

from __future__ import annotations

import datetime as dt
import secrets

import sqlalchemy as sa

from hq.db.events import ConfigChange
from hq.db.model import settings
from hq.states import EventKind

CLUSTER_ACTIVE = "cluster_active"
# A random name of this database, made once: daemons that outlive a database (a recreated
# one starts its ids at 1 again) tell its jobs from the new one's by it.
DATABASE_ID = "database_id"

# Written by --add-standard-entries when missing; an admin's later change is never overwritten.
STANDARD_SETTINGS = {CLUSTER_ACTIVE: "yes"}


def get_setting(conn: sa.Connection, name: str) -> str | None:
    return conn.execute(sa.select(settings.c.value).where(settings.c.name == name)).scalar()


def set_setting(conn: sa.Connection, name: str, value: str, now: dt.datetime) -> None:
    updated = conn.execute(sa.update(settings).where(settings.c.name == name)
                           .values(value=value, updated_at=now))
    if updated.rowcount == 0:
        conn.execute(sa.insert(settings).values(name=name, value=value, updated_at=now))


def add_missing_settings(conn: sa.Connection, now: dt.datetime) -> list[ConfigChange]:
    """Insert the standard settings that are absent; return a change for each one added."""
    added = []
    for name, value in STANDARD_SETTINGS.items():
        if get_setting(conn, name) is None:
            set_setting(conn, name, value, now)
            added.append(ConfigChange(EventKind.CLUSTER, name, f"added ({value})"))
    if get_setting(conn, DATABASE_ID) is None:
        added.append(ConfigChange(EventKind.CLUSTER, DATABASE_ID,
                                  f"added ({ensure_database_id(conn, now)})"))
    return added


def ensure_database_id(conn: sa.Connection, now: dt.datetime) -> str:
    """This database's identity, made (and stored) on first use."""
    value = get_setting(conn, DATABASE_ID)
    if value is None:
        value = secrets.token_hex(8)
        set_setting(conn, DATABASE_ID, value, now)
    return value

"""Users and their roles: loaded from etc/users, read by hq-server to authorise requests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from hq.config import UserConfig
from hq.db.events import ConfigChange
from hq.db.model import user_roles, user_usage, users
from hq.states import EventKind, Role


@dataclass(frozen=True)
class UserRecord:
    id: int
    name: str
    roles: frozenset[Role]
    retired: bool
    share: float = 1.0
    max_running: int | None = None
    max_cores: int | None = None

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles


def list_users(conn: sa.Connection, *, include_retired: bool = False) -> list[UserRecord]:
    roles: dict[int, set[Role]] = {}
    for user_id, role in conn.execute(sa.select(user_roles.c.user_id, user_roles.c.role)):
        roles.setdefault(user_id, set()).add(role)
    query = sa.select(users.c.id, users.c.name, users.c.retired, users.c.share,
                      users.c.max_running, users.c.max_cores).order_by(users.c.name)
    if not include_retired:
        query = query.where(users.c.retired.is_(False))
    return [UserRecord(id=r.id, name=r.name, roles=frozenset(roles.get(r.id, ())),
                       retired=r.retired, share=r.share, max_running=r.max_running,
                       max_cores=r.max_cores) for r in conn.execute(query)]


def _roles_word(roles: frozenset[Role]) -> str:
    return ",".join(sorted(roles)) or "none"


def sync_users(conn: sa.Connection, wanted: Sequence[UserConfig], now: dt.datetime,
               ) -> list[ConfigChange]:
    """Make the users table match etc/users; return one line per change.

    Users that left the file are retired, not deleted: their jobs keep their owner.
    """
    existing = {u.name: u for u in list_users(conn, include_retired=True)}
    changes: list[ConfigChange] = []
    for cfg in wanted:
        old = existing.pop(cfg.name, None)
        if old is None:
            inserted = conn.execute(sa.insert(users).values(
                name=cfg.name, retired=False, created_at=now, updated_at=now, **_limits(cfg)))
            user_id = inserted.inserted_primary_key[0]
            _set_roles(conn, user_id, cfg.roles)
            changes.append(ConfigChange(EventKind.USER, cfg.name,
                                        f"added ({_roles_word(cfg.roles)})"))
            continue
        if old.retired:
            conn.execute(sa.update(users).where(users.c.id == old.id)
                         .values(retired=False, updated_at=now))
            changes.append(ConfigChange(EventKind.USER, cfg.name,
                                        "back in etc/users (no longer retired)"))
        if old.roles != cfg.roles:
            _set_roles(conn, old.id, cfg.roles)
            conn.execute(sa.update(users).where(users.c.id == old.id).values(updated_at=now))
            changes.append(ConfigChange(
                EventKind.USER, cfg.name,
                f"roles {_roles_word(old.roles)} -> {_roles_word(cfg.roles)}"))
        if (old.share, old.max_running, old.max_cores) != tuple(_limits(cfg).values()):
            conn.execute(sa.update(users).where(users.c.id == old.id)
                         .values(updated_at=now, **_limits(cfg)))
            changes.append(ConfigChange(
                EventKind.USER, cfg.name,
                f"share {cfg.share:g}, max_running {cfg.max_running or '-'}, "
                f"max_cores {cfg.max_cores or '-'}"))
    for gone in existing.values():
        if not gone.retired:
            conn.execute(sa.update(users).where(users.c.id == gone.id)
                         .values(retired=True, updated_at=now))
            changes.append(ConfigChange(EventKind.USER, gone.name,
                                        "retired (no longer in etc/users)"))
    return changes


def _limits(cfg: UserConfig) -> dict[str, object]:
    return {"share": cfg.share, "max_running": cfg.max_running, "max_cores": cfg.max_cores}


def _set_roles(conn: sa.Connection, user_id: int, roles: frozenset[Role]) -> None:
    conn.execute(sa.delete(user_roles).where(user_roles.c.user_id == user_id))
    conn.execute(sa.insert(user_roles), [{"user_id": user_id, "role": r} for r in sorted(roles)])


def load_usage(conn: sa.Connection) -> list[tuple[str, float, float]]:
    """(user, decayed core-seconds, as of: UTC seconds) of every user with a usage row."""
    query = (sa.select(users.c.name, user_usage.c.core_seconds, user_usage.c.updated_at)
             .join(users, users.c.id == user_usage.c.user_id))
    return [(name, value, at.timestamp()) for name, value, at in conn.execute(query)]


def save_usage(conn: sa.Connection, rows: Iterable[tuple[int, float, dt.datetime]]) -> None:
    """(user id, core-seconds, as of) rows, written over the old ones."""
    for user_id, value, at in rows:
        updated = conn.execute(sa.update(user_usage).where(user_usage.c.user_id == user_id)
                               .values(core_seconds=value, updated_at=at))
        if updated.rowcount == 0:
            conn.execute(sa.insert(user_usage).values(user_id=user_id, core_seconds=value,
                                                      updated_at=at))

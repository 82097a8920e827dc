"""Who ran when: hq-server instances and the user-servers that connected to them."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from hq.db.model import server_instances, user_servers


def record_server_start(conn: sa.Connection, hostname: str, pid: int, version: str,
                        now: dt.datetime) -> int:
    result = conn.execute(sa.insert(server_instances).values(
        hostname=hostname, pid=pid, version=version, started_at=now))
    return int(result.inserted_primary_key[0])


def record_server_stop(conn: sa.Connection, instance_id: int, now: dt.datetime) -> None:
    conn.execute(sa.update(server_instances).where(server_instances.c.id == instance_id)
                 .values(stopped_at=now))


def record_user_server_seen(conn: sa.Connection, user_id: int, hostname: str, pid: int,
                            now: dt.datetime) -> None:
    """Note a user-server's connection; one open row per (user, pid)."""
    updated = conn.execute(
        sa.update(user_servers)
        .where(user_servers.c.user_id == user_id, user_servers.c.pid == pid,
               user_servers.c.hostname == hostname, user_servers.c.stopped_at.is_(None))
        .values(last_seen_at=now))
    if updated.rowcount == 0:
        conn.execute(sa.insert(user_servers).values(
            user_id=user_id, hostname=hostname, pid=pid, started_at=now, last_seen_at=now))


def record_user_server_gone(conn: sa.Connection, user_id: int, pid: int,
                            now: dt.datetime) -> None:
    conn.execute(sa.update(user_servers)
                 .where(user_servers.c.user_id == user_id, user_servers.c.pid == pid,
                        user_servers.c.stopped_at.is_(None))
                 .values(stopped_at=now, last_seen_at=now))

"""Who ran when: hq-server instances and the user-servers that connected to them."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from hq.db.model import exec_servers, server_instances, user_servers


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


def record_exec_server(conn: sa.Connection, user_id: int, host_id: int, pid: int | None,
                       state: str, reason: str | None, now: dt.datetime) -> None:
    """An exec-server's state: a new row when one comes up, else its open row changes (and is
    closed, with ``stopped_at``, once it is gone)."""
    gone = state != "running"
    open_row = (sa.select(exec_servers.c.id)
                .where(exec_servers.c.user_id == user_id, exec_servers.c.host_id == host_id,
                       exec_servers.c.stopped_at.is_(None))
                .order_by(exec_servers.c.id.desc()).limit(1))
    row_id = conn.execute(open_row).scalar()
    if not gone:
        if row_id is not None:   # the one before it was never seen to go
            conn.execute(sa.update(exec_servers).where(exec_servers.c.id == row_id)
                         .values(stopped_at=now, state="connection lost"))
        conn.execute(sa.insert(exec_servers).values(
            user_id=user_id, host_id=host_id, pid=pid, started_at=now, last_seen_at=now,
            state=state, state_reason=reason))
    elif row_id is not None:
        conn.execute(sa.update(exec_servers).where(exec_servers.c.id == row_id).values(
            state=state, state_reason=reason, last_seen_at=now,
            stopped_at=None if state == "heartbeat lost" else now))

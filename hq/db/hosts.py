"""Hosts: static configuration from etc/cluster.tab plus the live state hq-server records."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from hq.config import HostConfig
from hq.db.events import ConfigChange
from hq.db.model import hosts
from hq.states import EventKind, HostState


@dataclass(frozen=True)
class HostRecord:
    id: int
    name: str
    full_name: str
    address: str
    ssh_port: int
    cores: int
    max_jobs: int | None
    memory_mb: int | None
    os: str | None
    features: frozenset[str]
    gpus: tuple[str, ...]
    info: str
    active: bool
    retired: bool
    drained: bool
    drain_reason: str | None
    drained_by: str | None
    drained_at: dt.datetime | None
    state: HostState
    state_reason: str | None
    load1: float | None
    free_memory_mb: int | None
    last_heartbeat_at: dt.datetime | None


def _features_text(features: frozenset[str]) -> str:
    return ",".join(sorted(features))


def _record(row: sa.RowMapping) -> HostRecord:
    values = {k: row[k] for k in HostRecord.__dataclass_fields__}
    values["features"] = frozenset(f for f in row["features"].split(",") if f)
    values["gpus"] = tuple(g for g in row["gpus"].split(",") if g)
    return HostRecord(**values)


def list_hosts(conn: sa.Connection, *, include_retired: bool = False) -> list[HostRecord]:
    query = sa.select(hosts).order_by(hosts.c.name)
    if not include_retired:
        query = query.where(hosts.c.retired.is_(False))
    return [_record(row) for row in conn.execute(query).mappings()]


# Columns that etc/cluster.tab owns; everything else on a host row is live state.
_CONFIG_COLUMNS = ("full_name", "address", "ssh_port", "cores", "max_jobs", "memory_mb", "os",
                   "features", "gpus", "info", "active")


def _config_values(cfg: HostConfig) -> dict[str, object]:
    return {"full_name": cfg.full_name, "address": cfg.address, "ssh_port": cfg.ssh_port,
            "cores": cfg.cores, "max_jobs": cfg.max_jobs, "memory_mb": cfg.memory_mb,
            "os": cfg.os, "features": _features_text(cfg.features), "gpus": ",".join(cfg.gpus),
            "info": cfg.info,
            "active": cfg.active}


def _word(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return "-"
    return str(value)


def sync_hosts(conn: sa.Connection, wanted: Sequence[HostConfig], now: dt.datetime,
               ) -> list[ConfigChange]:
    """Make the hosts table match etc/cluster.tab; return one line per change.

    Hosts that left the file are retired (kept for the history of their jobs), never deleted.
    Live state (reachability, load, drain) is left alone.
    """
    existing = {row["name"]: row for row in conn.execute(sa.select(hosts)).mappings()}
    changes: list[ConfigChange] = []
    for cfg in wanted:
        values = _config_values(cfg)
        old = existing.pop(cfg.name, None)
        if old is None:
            conn.execute(sa.insert(hosts).values(
                name=cfg.name, **values, retired=False, drained=False, state=HostState.UNKNOWN,
                created_at=now, updated_at=now))
            memory = f", {cfg.memory_mb} MiB" if cfg.memory_mb else ""
            changes.append(ConfigChange(EventKind.HOST, cfg.name,
                                        f"added ({cfg.cores} cores{memory})"))
            continue
        diffs = [f"{col} {_word(old[col])} -> {_word(values[col])}"
                 for col in _CONFIG_COLUMNS if old[col] != values[col]]
        if old["retired"]:
            diffs.insert(0, "back in etc/cluster.tab (no longer retired)")
        if diffs:
            conn.execute(sa.update(hosts).where(hosts.c.id == old["id"])
                         .values(**values, retired=False, updated_at=now))
            changes.append(ConfigChange(EventKind.HOST, cfg.name, ", ".join(diffs)))
    for gone in existing.values():
        if not gone["retired"]:
            conn.execute(sa.update(hosts).where(hosts.c.id == gone["id"])
                         .values(retired=True, updated_at=now))
            changes.append(ConfigChange(EventKind.HOST, gone["name"],
                                        "retired (no longer in etc/cluster.tab)"))
    return changes


# Columns hq-server may change on a host row while it runs.
LIVE_COLUMNS = frozenset({"active", "drained", "drain_reason", "drained_by", "drained_at",
                          "state", "state_reason", "load1", "free_memory_mb",
                          "last_heartbeat_at", "updated_at"})


def update_host(conn: sa.Connection, name: str, values: dict[str, object]) -> None:
    unknown = set(values) - LIVE_COLUMNS
    if unknown:
        raise ValueError(f"host {name}: not live columns: {sorted(unknown)}")
    conn.execute(sa.update(hosts).where(hosts.c.name == name).values(**values))

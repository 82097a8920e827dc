"""hq-server's database writer on both backends: batches, order, and one bad item isolated."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import sqlalchemy as sa

from hq.db.model import settings
from hq.db.settings import get_setting, set_setting
from hq.errors import DatabaseError
from hq.server.store import Store

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def with_store(engine: sa.Engine, body) -> None:  # type: ignore[no-untyped-def]
    async def run() -> None:
        store = Store(engine, asyncio.get_running_loop(), flush_interval=0.05, batch_max=5000)
        store.start()
        try:
            await body(store)
        finally:
            store.stop()
    asyncio.run(run())


def test_writes_queued_together_commit_in_one_batch_in_order(engine):
    connections: list[int] = []

    def write(n: int):  # type: ignore[no-untyped-def]
        def work(conn: sa.Connection) -> None:
            connections.append(id(conn))
            set_setting(conn, "counter", str(n), NOW)
        return work

    async def body(store: Store) -> None:
        futures = [store.write(write(n), what=f"write {n}") for n in range(200)]
        await asyncio.gather(*futures)
        assert await store.read(lambda conn: get_setting(conn, "counter"), what="read") == "199"

    with_store(engine, body)
    assert len(connections) == 200
    assert len(set(connections)) <= 3   # one transaction for all (a few if the thread woke early)


def test_one_failing_write_loses_none_of_the_others_in_its_batch(engine):
    def good(name: str):  # type: ignore[no-untyped-def]
        return lambda conn: set_setting(conn, name, "kept", NOW)

    def bad(conn: sa.Connection) -> None:
        set_setting(conn, "half-written", "x", NOW)
        raise ValueError("a bug in one item")

    async def body(store: Store) -> None:
        first = store.write(good("before"), what="before")
        broken = store.write(bad, what="the bad one")
        last = store.write(good("after"), what="after")
        await asyncio.gather(first, last)
        with pytest.raises(DatabaseError, match="the bad one failed: a bug in one item"):
            await broken

    with_store(engine, body)
    with engine.connect() as conn:
        names = {r.name for r in conn.execute(sa.select(settings.c.name))}
    assert names == {"before", "after"}     # and nothing of the bad one, not half of it

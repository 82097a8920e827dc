"""Fixtures of the database tests (each runs on SQLite and on MariaDB, see ``db_config``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from hq.db import migrate
from hq.db.engine import create_engine


@pytest.fixture
def engine(db_config) -> Iterator[sa.Engine]:  # type: ignore[no-untyped-def]
    """An Engine on a fresh database with hq's schema at the newest revision."""
    engine = create_engine(db_config)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()

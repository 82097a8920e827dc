"""Whether a database's schema is the one this hq needs, without loading alembic.

hq-server checks this at every start, and alembic's import is a third of hq-server's start
time; the revision stored in ``alembic_version`` is compared with ``HEAD`` here, and only a
database at another revision (or none) loads ``hq.db.migrate`` for its exact message.
tests/migrations/test_migration_chain.py checks that ``HEAD`` is the chain's head.
"""

from __future__ import annotations

import sqlalchemy as sa

HEAD = "0004"   # the newest migration in hq/db/migrations/versions


def stored_revision(engine: sa.Engine) -> str | None:
    """The revision alembic recorded in the database; None where there is none."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    return rows[0][0] if len(rows) == 1 else None


def require_head(engine: sa.Engine) -> None:
    """Raise DatabaseError naming the command to run unless the schema is at ``HEAD``."""
    if stored_revision(engine) == HEAD:
        return
    from hq.db import migrate

    migrate.require_head(engine)

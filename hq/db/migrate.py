"""Schema versions: upgrade, downgrade, and asking where a database stands.

Alembic is driven from code (no alembic.ini): hq-dbadmin and the tests hand in an Engine and
this module runs the migration chain in ``hq/db/migrations`` on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from hq.errors import DatabaseError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migration chain is empty"
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at; None for a database without hq's schema."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        if self.current is None:
            return f"no hq schema (head is {self.head})"
        return f"{self.current}{' (head)' if self.at_head else f', head is {self.head}'}"


def schema_status(engine: sa.Engine) -> SchemaStatus:
    return SchemaStatus(current=current_revision(engine), head=head_revision())


def require_head(engine: sa.Engine) -> None:
    """Raise DatabaseError naming the command to run unless the schema is at head."""
    status = schema_status(engine)
    if status.current is None:
        raise DatabaseError("the database has no hq schema: run "
                            "'hq-dbadmin --create-tables --add-standard-entries'")
    if not status.at_head:
        raise DatabaseError(f"the database schema is at {status.current}, this hq needs "
                            f"{status.head}: run 'hq-dbadmin upgrade'")


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)


def unexpected_tables(engine: sa.Engine) -> list[str]:
    """Tables present in a database that has no hq schema version (someone else's data)."""
    return sorted(sa.inspect(engine).get_table_names())


def drop_schema(engine: sa.Engine) -> None:
    """Remove every hq table and view, and alembic's version table with them."""
    downgrade(engine, "base")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")

"""The migration chain on SQLite and MariaDB: up, down, up again, and no drift from the models."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from hq.db import migrate
from hq.db.engine import create_engine
from hq.db.model import REPORT_VIEWS, metadata

HQ_TABLES = set(metadata.tables)


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def _views(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_view_names())


def test_upgrade_downgrade_upgrade_leaves_the_full_schema(db_config):
    engine = create_engine(db_config)
    assert migrate.current_revision(engine) is None

    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert _tables(engine) == HQ_TABLES
    assert _views(engine) == set(REPORT_VIEWS)

    migrate.downgrade(engine, "base")
    assert _tables(engine) == set()
    assert _views(engine) == set()

    migrate.upgrade(engine)
    assert _tables(engine) == HQ_TABLES
    assert migrate.schema_status(engine).at_head


def test_the_quick_revision_check_knows_the_chains_head(db_config):
    from hq.db import revision
    from hq.errors import DatabaseError

    engine = create_engine(db_config)
    assert migrate.head_revision() == revision.HEAD   # bump it with every new migration
    assert revision.stored_revision(engine) is None
    with pytest.raises(DatabaseError, match="no hq schema"):
        revision.require_head(engine)
    migrate.upgrade(engine, "0003")
    assert revision.stored_revision(engine) == "0003"
    with pytest.raises(DatabaseError, match="hq-dbadmin upgrade"):
        revision.require_head(engine)
    migrate.upgrade(engine)
    assert revision.stored_revision(engine) == migrate.current_revision(engine)
    revision.require_head(engine)


def test_autogenerate_finds_no_difference_between_models_and_migrations(db_config):
    engine = create_engine(db_config)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_every_migration_has_a_docstring_and_a_downgrade():
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = list(scripts.walk_revisions())
    assert revisions, "no migrations found"
    for rev in revisions:
        assert rev.module.__doc__ and len(rev.module.__doc__.strip()) > 20, rev.revision
        assert callable(getattr(rev.module, "downgrade", None)), rev.revision
        assert rev.revision.isdigit() and len(rev.revision) == 4, rev.revision

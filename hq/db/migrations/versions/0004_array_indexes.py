"""submissions.array_indexes: an array submitted with --array is signed once, as one spec
with its index set, instead of once per element; the set is stored with the submission and
read back into each element's spec (whose signature covers it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hq.errors import UsageError

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN on both backends (SQLite's batch mode would rebuild the table under
    # the report views); the arrays stored before were signed per job: NULL
    op.add_column("submissions", sa.Column(
        "array_indexes", sa.String(1024), nullable=True,
        comment="an array signed as a whole (--array): its index set, e.g. 1-500:2, "
                "part of each element's signed spec; NULL: each job signed alone"))


def downgrade() -> None:
    # the arrays signed as a whole could not start any more without their index set
    bind = op.get_bind()
    held = bind.execute(sa.text(
        "SELECT COUNT(*) FROM jobs JOIN submissions ON submissions.id = jobs.submission_id "
        "WHERE submissions.array_indexes IS NOT NULL "
        "AND jobs.state NOT IN ('done', 'failed', 'cancelled')")).scalar()
    if held:
        raise UsageError(f"{held} unfinished job(s) belong to arrays signed as a whole, which "
                         "revision 0003 cannot hold: let them end or cancel them first")
    op.drop_column("submissions", "array_indexes")

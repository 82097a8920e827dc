"""jobs.attempt: every dispatch of a job is a new attempt (one more each time), so that
daemons tell its runs apart without counting a requeue of a job that never started as a
restart (restart_count).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 01:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN on both backends (SQLite's batch mode would rebuild the table under
    # the report views)
    op.add_column("jobs", sa.Column("attempt", sa.Integer(), nullable=False, server_default="0",
                                    comment="times dispatched: each dispatch is a new attempt"))
    # the jobs that were dispatched or running kept their attempt in restart_count
    op.execute("UPDATE jobs SET attempt = restart_count")


def downgrade() -> None:
    op.drop_column("jobs", "attempt")

"""approval deadline: when a waiting run's approval times out

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 12:00:00

A run waiting for a person is parked (no runner holds it), so the reaper no longer sees it
announced. It looks instead for waiting runs whose deadline passed without a runner acting on it.
Set from each `approval_required` event (its timestamp plus its `timeout_s`).
"""

import sqlalchemy as sa
from alembic import op

from agentbus.common.db import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on both databases (no batch copy: it would drop 0003's triggers on SQLite).
    op.add_column("runs", sa.Column("approval_deadline", UTCDateTime(), nullable=True))
    op.create_index("ix_runs_status_deadline", "runs", ["status", "approval_deadline"])


def downgrade() -> None:
    op.drop_index("ix_runs_status_deadline", table_name="runs")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("approval_deadline")

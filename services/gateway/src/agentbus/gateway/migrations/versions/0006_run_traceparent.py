"""run traceparent: the trace a run belongs to

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 18:20:00

With tracing on, the W3C `traceparent` of the request that created a run, so a run held under its
task's `max_concurrent_runs` and queued later still carries it in its `RunStart`. NULL with tracing
off.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("traceparent", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("traceparent")

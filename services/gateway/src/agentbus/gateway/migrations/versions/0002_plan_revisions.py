"""plan revisions: max_revision_rounds on tasks and runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 03:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite cannot alter tables in place (and it is a plain ALTER on PostgreSQL).
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("max_revision_rounds", sa.Integer(), nullable=False, server_default=sa.text("2"))
        )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("max_revision_rounds", sa.Integer(), nullable=False, server_default=sa.text("2"))
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("max_revision_rounds")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("max_revision_rounds")

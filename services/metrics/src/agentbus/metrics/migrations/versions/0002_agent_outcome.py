"""The metrics' agent kind and terminal outcome as columns, and the indexes of summaries and series.

Revision ID: 0002_agent_outcome
Revises: 0001_metrics
Create Date: 2026-12-06

Rows recorded before have both in `labels` (`agent`, `status`): copied over.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_agent_outcome"
down_revision = "0001_metrics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("metrics", sa.Column("agent", sa.String(100), nullable=True))
    op.add_column("metrics", sa.Column("outcome", sa.String(16), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE metrics SET agent = labels->>'agent', outcome = labels->>'status'")
    else:
        op.execute(
            "UPDATE metrics SET agent = json_extract(labels, '$.agent'), "
            "outcome = json_extract(labels, '$.status')"
        )
    op.create_index("ix_metrics_name_timestamp", "metrics", ["name", "timestamp"])
    op.create_index("ix_metrics_agent_name_timestamp", "metrics", ["agent", "name", "timestamp"])


def downgrade() -> None:
    op.drop_index("ix_metrics_agent_name_timestamp", "metrics")
    op.drop_index("ix_metrics_name_timestamp", "metrics")
    with op.batch_alter_table("metrics") as batch:
        batch.drop_column("outcome")
        batch.drop_column("agent")

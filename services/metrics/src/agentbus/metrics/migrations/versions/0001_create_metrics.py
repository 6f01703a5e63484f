"""Create the metrics and metric_tombstones tables.

Revision ID: 0001_metrics
Revises:
Create Date: 2024-01-01

Types are spelled out here rather than imported from the models, so this
revision keeps describing the schema it created even when the models move on.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_metrics"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "metrics",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("metric_type", sa.String(16), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("unit", sa.String(32), nullable=True),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("run_id", "name", name="uq_metrics_run_id_name"),
    )
    for column in ("task_id", "run_id", "name", "timestamp"):
        op.create_index(f"ix_metrics_{column}", "metrics", [column])

    op.create_table(
        "metric_tombstones",
        sa.Column("resource_id", sa.String(), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_metric_tombstones_deleted_at", "metric_tombstones", ["deleted_at"])


def downgrade() -> None:
    op.drop_table("metric_tombstones")
    op.drop_table("metrics")

"""Hourly roll-ups of the raw rows older than the retention age.

Revision ID: 0003_rollups
Revises: 0002_agent_outcome
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_rollups"
down_revision = "0002_agent_outcome"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_rollups",
        sa.Column("task_id", sa.String(), primary_key=True),
        sa.Column("agent", sa.String(100), primary_key=True),
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("outcome", sa.String(16), primary_key=True),
        sa.Column("hour", sa.BigInteger(), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("p50", sa.Float(), nullable=False),
        sa.Column("p95", sa.Float(), nullable=False),
        sa.Column("last", sa.Float(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_metric_rollups_name_hour", "metric_rollups", ["name", "hour"])


def downgrade() -> None:
    op.drop_table("metric_rollups")

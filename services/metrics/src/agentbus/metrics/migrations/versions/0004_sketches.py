"""Hourly and daily sketches of the metrics, and which raw rows they count.

Revision ID: 0004_sketches
Revises: 0003_rollups
Create Date: 2026-12-06

Rows stored before are not aggregated yet: the service's next aggregation round counts them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_sketches"
down_revision = "0003_rollups"
branch_labels = None
depends_on = None

OUTCOMES = ("completed", "failed", "rejected", "cancelled", "timeout")


def upgrade() -> None:
    op.add_column(
        "metrics", sa.Column("aggregated", sa.Boolean(), nullable=False, server_default=sa.text("false"))
    )
    for suffix, columns in (("", ["name", "timestamp"]), ("_agent", ["agent", "name", "timestamp"])):
        op.create_index(
            f"ix_metrics_unaggregated{suffix}",
            "metrics",
            columns,
            sqlite_where=sa.text("aggregated = 0"),
            postgresql_where=sa.text("NOT aggregated"),
        )
    op.create_table(
        "metric_sketches",
        sa.Column("agent", sa.String(100), primary_key=True),
        sa.Column("span", sa.String(1), primary_key=True),
        sa.Column("start", sa.BigInteger(), primary_key=True),
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("last", sa.Float(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
        *(sa.Column(o, sa.BigInteger(), nullable=False) for o in OUTCOMES),
        sa.Column("p50", sa.Float(), nullable=True),
        sa.Column("p95", sa.Float(), nullable=True),
    )
    op.create_table(
        "metric_bins",
        sa.Column("agent", sa.String(100), primary_key=True),
        sa.Column("span", sa.String(1), primary_key=True),
        sa.Column("start", sa.BigInteger(), primary_key=True),
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("bin", sa.Integer(), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("metric_bins")
    op.drop_table("metric_sketches")
    op.drop_index("ix_metrics_unaggregated_agent", "metrics")
    op.drop_index("ix_metrics_unaggregated", "metrics")
    with op.batch_alter_table("metrics") as batch:
        batch.drop_column("aggregated")

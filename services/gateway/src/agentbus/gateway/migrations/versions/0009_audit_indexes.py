"""the audit trail keeps two indexes: its order and a target's history

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 22:15:00

An audit entry is written in the transaction of every change (every task or run created, updated,
deleted, decided), and read by an admin now and then. Each index of `audit_log` is one more B-tree
written per change: with four, the entry cost SQLite more than the task it recorded (about 65 us
against 55 us per write here; with two, about 25 us). Kept: `at` (the trail newest first) and
`target_id` (what happened to this run or task). A filter by actor or action walks the trail newest
first instead.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_audit_actor", table_name="audit_log")
    op.drop_index("ix_audit_action", table_name="audit_log")


def downgrade() -> None:
    op.create_index("ix_audit_actor", "audit_log", ["actor_id", "at"])
    op.create_index("ix_audit_action", "audit_log", ["action", "at"])

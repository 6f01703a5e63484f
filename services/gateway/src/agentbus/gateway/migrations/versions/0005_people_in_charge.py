"""people in charge: API keys, the audit trail, approvals, approval policy, budgets, concurrency

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 17:00:00

- `api_keys`: keys made by an admin, stored only as a salted hash.
- `audit_log`: append-only, who did what (no route changes or deletes a row; no foreign key, so
  deleting a task keeps the entries about it).
- `approvals`: one row per plan version that waited for a decision (the inbox).
- tasks: `on_approval_timeout`, `approvers`, `approval_by_other`, `max_tokens`, `max_cost_usd`,
  `max_concurrent_runs`.
- runs: `created_by` (who started it: the four-eyes rule), `held` (pending, not yet queued because
  its task has `max_concurrent_runs` live runs).
"""

import sqlalchemy as sa
from alembic import op

from agentbus.common.db import JSONType, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs on both databases (a batch copy would drop 0003's triggers on SQLite).
    op.add_column(
        "tasks",
        sa.Column("on_approval_timeout", sa.String(16), nullable=False, server_default="timeout"),
    )
    op.add_column("tasks", sa.Column("approvers", JSONType, nullable=True))
    op.add_column(
        "tasks", sa.Column("approval_by_other", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("tasks", sa.Column("max_tokens", sa.Integer(), nullable=True))
    op.add_column("tasks", sa.Column("max_cost_usd", sa.Float(), nullable=True))
    op.add_column("tasks", sa.Column("max_concurrent_runs", sa.Integer(), nullable=True))
    op.add_column("runs", sa.Column("created_by", JSONType, nullable=True))
    op.add_column("runs", sa.Column("held", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_runs_held", "runs", ["held", "task_id", "created_at"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(128), nullable=False),
        sa.Column("created_by", JSONType, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_api_keys_created", "api_keys", ["created_at", "id"])

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor_id", sa.String(200), nullable=False),
        sa.Column("actor_name", sa.String(200), nullable=False),
        sa.Column("actor_role", sa.String(16), nullable=True),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("target_type", sa.String(20), nullable=True),
        sa.Column("target_id", sa.String(200), nullable=True),
        sa.Column("detail", JSONType, nullable=True),
    )
    op.create_index("ix_audit_at", "audit_log", ["at", "id"])
    op.create_index("ix_audit_actor", "audit_log", ["actor_id", "at"])
    op.create_index("ix_audit_action", "audit_log", ["action", "at"])
    op.create_index("ix_audit_target", "audit_log", ["target_id", "at"])

    op.create_table(
        "approvals",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("task_id", sa.String(32), nullable=False),
        sa.Column("plan", JSONType, nullable=True),
        sa.Column("plan_version", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.Column("deadline", UTCDateTime(), nullable=True),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.Column("decided_by", JSONType, nullable=True),
        sa.Column("feedback", sa.Text(), nullable=True),
    )
    op.create_index("ix_approvals_status", "approvals", ["status", "requested_at", "id"])
    op.create_index("ix_approvals_task", "approvals", ["task_id", "requested_at", "id"])
    op.create_index("ix_approvals_run", "approvals", ["run_id", "plan_version"])


def downgrade() -> None:
    op.drop_table("approvals")
    op.drop_table("audit_log")
    op.drop_table("api_keys")
    op.drop_index("ix_runs_held", table_name="runs")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("held")
        batch_op.drop_column("created_by")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        for name in (
            "max_concurrent_runs",
            "max_cost_usd",
            "max_tokens",
            "approval_by_other",
            "approvers",
            "on_approval_timeout",
        ):
            batch_op.drop_column(name)

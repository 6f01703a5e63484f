"""webhooks: where run events are POSTed, and one delivery row per (webhook, event)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 20:00:00

- `webhooks`: url, the event types asked for (or `*`), the signing secret (kept as given: the
  gateway signs with it), who made it.
- `webhook_deliveries`: inserted in the transaction that stores the event (at least once, and once
  across gateway copies: unique per webhook and event), sent and retried by `gateway/deliveries.py`,
  deleted `WEBHOOK_KEEP_DAYS` after they were made once settled (delivered or failed).
"""

import sqlalchemy as sa
from alembic import op

from agentbus.common.db import JSONType, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("events", JSONType, nullable=False),
        sa.Column("secret", sa.String(256), nullable=False),
        sa.Column("created_by", JSONType, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_webhooks_created", "webhooks", ["created_at", "id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "webhook_id", sa.String(32), sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("event_type", sa.String(40), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("task_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(200), nullable=True),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("webhook_id", "run_id", "seq", name="uq_webhook_deliveries_event"),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_webhook", "webhook_deliveries", ["webhook_id", "created_at", "id"])
    op.create_index("ix_webhook_deliveries_created", "webhook_deliveries", ["created_at"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")

"""The gateway's tables: tasks, runs, their events, the artifacts index, the row counts, and the
people side: API keys, the audit trail and approvals (migration 0005)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from agentbus.common.db import JSONType, UTCDateTime

metadata = MetaData()

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("description", Text),
    Column("config", JSONType),
    Column("agent", String(100), nullable=False),
    Column("agent_config", JSONType),
    Column("require_approval", Boolean, nullable=False),
    Column("approval_timeout_s", Integer, nullable=False),
    Column("timeout_s", Integer, nullable=False),
    Column("max_rounds", Integer, nullable=False),
    Column("max_revision_rounds", Integer, nullable=False, default=2, server_default=text("2")),
    Column("status", String(32), nullable=False),
    Column("total_runs", Integer, nullable=False, default=0),
    Column("successful_runs", Integer, nullable=False, default=0),
    Column("failed_runs", Integer, nullable=False, default=0),
    Column("last_run_at", UTCDateTime),
    Column("last_run_duration", Float),
    Column("last_error", Text),
    Column("latest_run_id", String(32)),
    Column("next_run_number", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # What becomes of a run whose approval deadline passes: `timeout`, `reject` or `approve`.
    Column("on_approval_timeout", String(16), nullable=False, default="timeout", server_default="timeout"),
    Column("approvers", JSONType),  # role names, key ids or jwt:<sub>; null or empty: any approver
    Column("approval_by_other", Boolean, nullable=False, default=False, server_default=text("false")),
    Column("max_tokens", Integer),
    Column("max_cost_usd", Float),
    Column("max_concurrent_runs", Integer),
    Index("ix_tasks_status_created", "status", "created_at", "id"),
    Index("ix_tasks_created", "created_at", "id"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("task_id", String(32), ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("run_number", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("agent", String(100), nullable=False),
    Column("require_approval", Boolean, nullable=False),
    Column("max_revision_rounds", Integer, nullable=False, default=2, server_default=text("2")),
    Column("agent_config", JSONType),
    Column("plan", JSONType),
    Column("progress", Float, nullable=False, default=0.0),
    Column("results", JSONType),
    Column("error_message", Text),
    Column("started_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Column("duration", Float),
    Column("approval", JSONType),
    Column("approval_deadline", UTCDateTime),  # while awaiting approval: when it times out
    Column("labels", JSONType),
    Column("last_seq", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("created_by", JSONType),  # {id, name, role} of who started it
    # Pending and not queued yet: its task already has `max_concurrent_runs` live runs.
    Column("held", Boolean, nullable=False, default=False, server_default=text("false")),
    Column("traceparent", String(64)),  # tracing on: the creating request's, for its RunStart
    UniqueConstraint("task_id", "run_number", name="uq_runs_task_number"),
    Index("ix_runs_task_created", "task_id", "created_at", "id"),
    Index("ix_runs_status_created", "status", "created_at", "id"),
    Index("ix_runs_created", "created_at", "id"),
    Index("ix_runs_status_deadline", "status", "approval_deadline"),
    Index("ix_runs_held", "held", "task_id", "created_at"),
)

run_events = Table(
    "run_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", String(32), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("timestamp", UTCDateTime, nullable=False),
    # The event exactly as published: replay sends these bytes, so a replayed
    # frame is identical to the live one.
    Column("payload", Text, nullable=False),
    UniqueConstraint("run_id", "seq", name="uq_run_events_run_seq"),
    Index("ix_run_events_task", "task_id", "run_id", "seq"),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", String(32), nullable=False),
    Column("name", String(255), nullable=False),
    Column("size", Integer, nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("run_id", "name", name="uq_artifacts_run_name"),
)

# Kept by triggers (migration 0003): the count of a name is the sum of its stripes' n.
row_counts = Table(
    "row_counts",
    metadata,
    Column("name", String(300), primary_key=True),
    Column("stripe", Integer, primary_key=True),
    Column("n", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("role", String(16), nullable=False),
    Column("salt", String(64), nullable=False),
    Column("hash", String(128), nullable=False),  # HMAC-SHA256(salt, secret): the key is never stored
    Column("created_by", JSONType),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
    Index("ix_api_keys_created", "created_at", "id"),
)

# Append-only: rows are inserted in the transaction of the change they record, never updated or
# deleted; no foreign key, so deleting a task keeps the entries about it.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor_id", String(200), nullable=False),
    Column("actor_name", String(200), nullable=False),
    Column("actor_role", String(16)),
    Column("action", String(40), nullable=False),
    Column("target_type", String(20)),
    Column("target_id", String(200)),
    Column("detail", JSONType),
    # Written with every change, read by an admin now and then: two indexes, the trail's order and
    # a target's history. Filters by actor or action walk the trail newest first (migration 0009).
    Index("ix_audit_at", "at", "id"),
    Index("ix_audit_target", "target_id", "at"),
)

# One row per plan version that waited for a decision: the approvals inbox.
approvals = Table(
    "approvals",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", String(32), nullable=False),
    Column("plan", JSONType),
    Column("plan_version", Integer),
    Column("status", String(20), nullable=False),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("deadline", UTCDateTime),
    Column("decided_at", UTCDateTime),
    Column("decided_by", JSONType),  # {id, name}, or null (the deadline's policy decided)
    Column("feedback", Text),
    Index("ix_approvals_status", "status", "requested_at", "id"),
    Index("ix_approvals_task", "task_id", "requested_at", "id"),
    Index("ix_approvals_run", "run_id", "plan_version"),
)

# Webhooks (migration 0007): where run events are POSTed. `secret` signs each delivery (HMAC-SHA256),
# so it is kept as given; no answer, log, error or audit entry carries it.
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("url", String(2048), nullable=False),
    Column("events", JSONType, nullable=False),  # event types, or ["*"]
    Column("secret", String(256), nullable=False),
    Column("created_by", JSONType),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_webhooks_created", "created_at", "id"),
)

# One row per (webhook, stored event) it asked for, inserted in the transaction that stores the
# event; `payload` is the event's stored JSON (a run deleted later still has its deliveries sent).
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("webhook_id", String(32), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("run_id", String(32), nullable=False),
    Column("task_id", String(32), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending, delivered, failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_status_code", Integer),
    Column("last_error", String(200)),
    Column("next_attempt_at", UTCDateTime),  # pending: due then; null once settled
    Column("claimed_until", UTCDateTime),  # a gateway copy is sending it until then
    Column("delivered_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("webhook_id", "run_id", "seq", name="uq_webhook_deliveries_event"),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_webhook", "webhook_id", "created_at", "id"),
    Index("ix_webhook_deliveries_created", "created_at"),  # pruning settled ones (WEBHOOK_KEEP_DAYS)
)

"""The gateway's tables: tasks, runs, their events, the artifacts index and the row counts."""

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
    Index("ix_tasks_status_created", "status", "created_at"),
    Index("ix_tasks_created", "created_at"),
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
    UniqueConstraint("task_id", "run_number", name="uq_runs_task_number"),
    Index("ix_runs_task_created", "task_id", "created_at"),
    Index("ix_runs_status_created", "status", "created_at"),
    Index("ix_runs_created", "created_at"),
    Index("ix_runs_status_deadline", "status", "approval_deadline"),
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

"""Tables owned by the metrics service (no other service reads or writes them)."""

from sqlalchemy import Column, Float, MetaData, String, Table, UniqueConstraint

from agentbus.common.db import JSONType, UTCDateTime

metadata = MetaData()

METRIC_TYPES = ("timer", "counter", "gauge")

metrics = Table(
    "metrics",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("task_id", String, nullable=False, index=True),
    Column("run_id", String, nullable=True, index=True),
    Column("name", String, nullable=False, index=True),
    Column("metric_type", String(16), nullable=False),
    Column("value", Float, nullable=False),
    Column("unit", String(32), nullable=True),
    Column("labels", JSONType, nullable=False),
    Column("timestamp", UTCDateTime, nullable=False, index=True),
    # A redelivered terminal event must never record a run's metric twice.
    UniqueConstraint("run_id", "name", name="uq_metrics_run_id_name"),
)

# Deleted tasks and runs. A run's terminal event can reach us after its
# `run.deleted` (the gateway cancels a live run, then deletes it), or be
# redelivered later; the tombstone keeps such an event from bringing the
# deleted metrics back.
metric_tombstones = Table(
    "metric_tombstones",
    metadata,
    Column("resource_id", String, primary_key=True),
    Column("kind", String(8), nullable=False),  # "task" or "run"
    Column("deleted_at", UTCDateTime, nullable=False, index=True),
)

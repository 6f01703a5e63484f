"""Tables owned by the metrics service (no other service reads or writes them)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    text,
)

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
    # The run's agent kind (also in `labels`), as a column so summaries and series filter on it.
    Column("agent", String(100), nullable=True),
    # The run's terminal status on the rows its terminal event yielded; null on metrics posted by hand.
    Column("outcome", String(16), nullable=True),
    # Counted in the hourly and daily sketches (sketches.py); rows not yet are read raw.
    Column("aggregated", Boolean, nullable=False, server_default=text("false")),
    # A redelivered terminal event must never record a run's metric twice.
    UniqueConstraint("run_id", "name", name="uq_metrics_run_id_name"),
    Index("ix_metrics_name_timestamp", "name", "timestamp"),
    Index("ix_metrics_agent_name_timestamp", "agent", "name", "timestamp"),
    # The rows not counted into the sketches yet (few: the open hour's, late ones), by name and by agent.
    *(
        Index(
            f"ix_metrics_unaggregated{suffix}",
            *columns,
            sqlite_where=text("aggregated = 0"),  # `~metrics.c.aggregated` as SQLite reads it
            postgresql_where=text("NOT aggregated"),
        )
        for suffix, columns in (("", ("name", "timestamp")), ("_agent", ("agent", "name", "timestamp")))
    ),
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

# Hourly roll-ups of raw rows older than the retention age (retention.py): one row per task, agent
# kind, name, outcome ("" for none) and hour. Percentiles are the hour's own (nearest rank).
metric_rollups = Table(
    "metric_rollups",
    metadata,
    Column("task_id", String, primary_key=True),
    Column("agent", String(100), primary_key=True),
    Column("name", String, primary_key=True),
    Column("outcome", String(16), primary_key=True),
    Column("hour", BigInteger, primary_key=True),  # epoch seconds of the hour's start (UTC)
    Column("count", BigInteger, nullable=False),
    Column("sum", Float, nullable=False),
    Column("min", Float, nullable=False),
    Column("max", Float, nullable=False),
    Column("p50", Float, nullable=False),
    Column("p95", Float, nullable=False),
    Column("last", Float, nullable=False),  # the value of the newest row
    Column("last_at", Float, nullable=False),  # and its time, in epoch seconds
    Index("ix_metric_rollups_name_hour", "name", "hour"),
)

# What summaries and series over many rows read (sketches.py): per name, per hour ("h") and per UTC
# day ("d"), for each agent kind ("" for none) and for all of them ("*"): exact count, sum, min, max,
# newest value and runs by outcome, and the values' histogram in `metric_bins`.
metric_sketches = Table(
    "metric_sketches",
    metadata,
    Column("agent", String(100), primary_key=True),
    Column("span", String(1), primary_key=True),
    Column("start", BigInteger, primary_key=True),  # epoch seconds of the hour's or day's start
    Column("name", String, primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("sum", Float, nullable=False),
    Column("min", Float, nullable=False),
    Column("max", Float, nullable=False),
    Column("last", Float, nullable=False),
    Column("last_at", Float, nullable=False),
    *(
        Column(o, BigInteger, nullable=False)
        for o in ("completed", "failed", "rejected", "cancelled", "timeout")
    ),
    # This sketch's own p50 and p95 from its bins (sketches.refresh_percentiles): a series bucket
    # that is one sketch reads its p95 here.
    Column("p50", Float, nullable=True),
    Column("p95", Float, nullable=True),
)

# The histograms: how many values fell in each logarithmic bin (sketches.bin_of: 1% wide).
metric_bins = Table(
    "metric_bins",
    metadata,
    Column("agent", String(100), primary_key=True),
    Column("span", String(1), primary_key=True),
    Column("start", BigInteger, primary_key=True),
    Column("name", String, primary_key=True),
    Column("bin", Integer, primary_key=True),
    Column("count", BigInteger, nullable=False),
)

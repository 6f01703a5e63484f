"""Pure parts of the metrics service: which rows an event yields, and settings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agentbus.contracts import Progress, Rejected, RunStats, Timeout
from agentbus.contracts.events import DecisionData, ProgressData, TimeoutData
from agentbus.contracts.messages import METRIC_VALUE_MAX, metric_value_ok
from agentbus.metrics.recorder import metric_rows
from agentbus.metrics.settings import Settings

AT = datetime(2025, 1, 1, tzinfo=UTC)
IDS = {"id": "e1", "seq": 4, "timestamp": AT, "task_id": "t1", "run_id": "r1"}


def test_non_terminal_events_record_nothing() -> None:
    data = ProgressData(step=1, total_steps=2, progress_percent=50, current_phase="executing")
    assert metric_rows(Progress(**IDS, data=data)) == []


def test_terminal_event_records_reported_stats() -> None:
    stats = RunStats(duration=3.0, steps=2, tokens_prompt=10, agent="openai")
    rows = metric_rows(Rejected(**IDS, data=DecisionData(feedback="no", stats=stats)))
    summary = {r["name"]: (r["metric_type"], r["value"], r["unit"]) for r in rows}
    assert summary == {
        "duration": ("timer", 3.0, "s"),
        "steps": ("counter", 2.0, "steps"),
        "tokens_prompt": ("counter", 10.0, "tokens"),
    }
    for row in rows:
        assert (row["task_id"], row["run_id"], row["timestamp"]) == ("t1", "r1", AT)
        assert row["labels"] == {"agent": "openai", "status": "rejected"}
    assert len({r["id"] for r in rows}) == len(rows)


def test_terminal_event_without_stats_still_records_the_run() -> None:
    rows = metric_rows(Timeout(**IDS, data=TimeoutData(phase="approval")))
    assert {r["name"]: r["value"] for r in rows} == {"duration": 0.0, "steps": 0.0}
    assert rows[0]["labels"] == {"agent": "", "status": "timeout"}


def test_values_no_real_run_reports_are_not_recorded() -> None:
    """NaN, infinities and values past METRIC_VALUE_MAX would make every summary they fall in an
    infinite sum (JSON null): the event's other values are still recorded."""
    stats = RunStats(
        duration=float("nan"),
        steps=2,
        approval_wait=-3.5e276,
        tokens_prompt=10**20,
        cost_usd=float("inf"),
        time_to_plan=METRIC_VALUE_MAX,
    )
    rows = metric_rows(Rejected(**IDS, data=DecisionData(feedback="no", stats=stats)))
    assert {r["name"]: r["value"] for r in rows} == {"steps": 2.0, "time_to_plan": METRIC_VALUE_MAX}
    assert metric_value_ok(-METRIC_VALUE_MAX) and not metric_value_ok(-METRIC_VALUE_MAX * 1.0001)


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "NATS_URL": "nats://n:4222",
            "METRICS_DATABASE_URL": "postgresql://u:s3cret@db/metrics",
            "NATS_REPLICAS": "3",
            "LOG_LEVEL": "debug",
            "METRICS_INSTANCE": "m-1",
        }
    )
    assert (s.nats_url, s.nats_replicas, s.log_level, s.instance) == ("nats://n:4222", 3, "debug", "m-1")
    assert "s3cret" not in repr(s) and "s3cret" not in s.database_url_redacted


def test_settings_defaults_and_bad_values() -> None:
    s = Settings.from_env({})
    assert (s.nats_url, s.database_url, s.nats_replicas) == (
        "nats://127.0.0.1:4222",
        "sqlite+aiosqlite:///./var/metrics.db",
        1,
    )
    assert s.instance
    for bad in ("zero", "0"):
        with pytest.raises(ValueError, match="NATS_REPLICAS"):
            Settings.from_env({"NATS_REPLICAS": bad})

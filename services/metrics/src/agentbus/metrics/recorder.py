"""Which metrics a run event yields: only terminal events record anything."""

from __future__ import annotations

import uuid
from typing import Any

from agentbus.contracts.events import TERMINAL_EVENT_TYPES, Event, RunStats, stats_of
from agentbus.contracts.status import STATUS_AFTER_EVENT

# (stats field, metric name, metric type, unit); recorded when the agent reports it.
_OPTIONAL = (
    ("approval_wait", "approval_wait", "timer", "s"),
    ("tokens_prompt", "tokens_prompt", "counter", "tokens"),
    ("tokens_completion", "tokens_completion", "counter", "tokens"),
    ("cost_usd", "cost_usd", "gauge", "USD"),
    ("time_to_plan", "time_to_plan", "timer", "s"),
)


def event_type(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def metric_rows(event: Event) -> list[dict[str, Any]]:
    """Rows for the `metrics` table; empty for a non-terminal event."""
    kind = event_type(event)
    if kind not in TERMINAL_EVENT_TYPES:
        return []
    stats = stats_of(event)
    if stats is None:
        # An agent that reported nothing: still record the run. Only `completion` carries a duration.
        stats = RunStats(duration=float(getattr(event.data, "duration", 0.0) or 0.0))  # type: ignore[attr-defined]
    agent = stats.agent or ""
    outcome = STATUS_AFTER_EVENT[kind] or kind
    labels = {"agent": agent, "status": outcome}

    def row(name: str, metric_type: str, value: float, unit: str) -> dict[str, Any]:
        return {
            "id": uuid.uuid4().hex,
            "task_id": event.task_id,
            "run_id": event.run_id,
            "name": name,
            "metric_type": metric_type,
            "value": float(value),
            "unit": unit,
            "labels": labels,
            "timestamp": event.timestamp,
            "agent": agent,
            "outcome": outcome,
        }

    rows = [row("duration", "timer", stats.duration, "s"), row("steps", "counter", stats.steps, "steps")]
    for attr, name, metric_type, unit in _OPTIONAL:
        value = getattr(stats, attr)
        if value is not None:
            rows.append(row(name, metric_type, value, unit))
    return rows

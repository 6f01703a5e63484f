"""Which metrics a run event yields: only terminal events record anything."""

from __future__ import annotations

import os
from typing import Any

from agentbus.contracts.events import TERMINAL_EVENT_TYPES, Event, RunStats, stats_of
from agentbus.contracts.messages import metric_value_ok
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


def new_ids(n: int) -> list[str]:
    """n ids as `uuid.uuid4().hex` makes them (version 4, RFC 4122 variant), from one read of the
    system's randomness instead of one each (and without a UUID object each)."""
    h = os.urandom(16 * n).hex()
    return [
        f"{h[i : i + 12]}4{h[i + 13 : i + 16]}{'89ab'[int(h[i + 16], 16) & 3]}{h[i + 17 : i + 32]}"
        for i in range(0, 32 * n, 32)
    ]


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
    values = [("duration", "timer", stats.duration, "s"), ("steps", "counter", stats.steps, "steps")]
    for attr, name, metric_type, unit in _OPTIONAL:
        value = getattr(stats, attr)
        if value is not None:
            values.append((name, metric_type, value, unit))
    # What no real run reports (NaN, infinite, beyond METRIC_VALUE_MAX) is not recorded: it would
    # turn every summary it falls in into an infinite sum.
    values = [v for v in values if metric_value_ok(v[2])]
    task_id, run_id, timestamp = event.task_id, event.run_id, event.timestamp
    return [
        {
            "id": id_,
            "task_id": task_id,
            "run_id": run_id,
            "name": name,
            "metric_type": metric_type,
            "value": float(value),
            "unit": unit,
            "labels": labels,
            "timestamp": timestamp,
            "agent": agent,
            "outcome": outcome,
        }
        for id_, (name, metric_type, value, unit) in zip(new_ids(len(values)), values, strict=True)
    ]

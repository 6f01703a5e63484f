"""The run's life in the runner's log: one INFO line for each event that marks a stage (plan ready,
waiting for a decision, the decision, the end with its duration), never one per progress event.

Called after the event is published, once per seq. The line's run ids come from the run's log
context (`agentbus.common.logs.bind_run`, set where the runner takes the run).
"""

from __future__ import annotations

import logging
from typing import Any

from agentbus.contracts import Event, RunStart

log = logging.getLogger("agentbus.runner.life")


def _stats(event: Event) -> Any:
    return getattr(getattr(event, "data", None), "stats", None)


def _ended(event: Event, outcome: str) -> str:
    stats = _stats(event)
    if stats is None:
        return outcome
    return f"{outcome} after {stats.duration:.3f}s ({stats.steps} steps)"


def _plan_ready(event: Event, start: RunStart) -> str:
    version = event.data.version
    steps = len(event.data.plan.get("steps", []))
    awaits = "awaits approval" if start.require_approval else "executing"
    return f"plan version {version} ready: {steps} steps, {awaits}"


def _approval_required(event: Event, start: RunStart) -> str:
    return (
        f"waiting for a decision on plan version {event.data.version} "
        f"(deadline {start.approval_timeout_s:g}s, then {start.on_approval_timeout})"
    )


def _decision(word: str) -> Any:
    def line(event: Event, start: RunStart) -> str:
        # The gateway logs who decided; here: a person's decision, or the deadline's policy.
        by_deadline = "approval deadline" in event.message
        how = f"by the deadline policy ({start.on_approval_timeout})" if by_deadline else "by a person"
        if word == "rejected":
            return _ended(event, f"plan rejected {how}; run ended")
        return f"plan {word} {how}"

    return line


def _failure(event: Event, start: RunStart) -> str:
    return _ended(event, f"failed: {event.data.error}")


def _cancelled(event: Event, start: RunStart) -> str:
    return _ended(event, f"cancelled: {event.data.reason}")


def _timeout(event: Event, start: RunStart) -> str:
    return _ended(event, f"timed out ({event.data.phase})")


LINES = {
    "plan_ready": _plan_ready,
    "approval_required": _approval_required,
    "approved": _decision("approved"),
    "rejected": _decision("rejected"),
    "revision_requested": lambda event, start: f"plan version {event.data.version} sent back for revision",
    "completion": lambda event, start: _ended(event, "completed"),
    "failure": _failure,
    "cancelled": _cancelled,
    "timeout": _timeout,
}


def life(event_type: str, event: Event, start: RunStart) -> None:
    """Log the stage `event` marks, if it marks one."""
    line = LINES.get(event_type)
    if line is None:
        return
    try:
        text = line(event, start)
    except AttributeError:  # an event without the data expected: still say what happened
        text = event.message
    log.info("run %s: %s", start.run_id, text)

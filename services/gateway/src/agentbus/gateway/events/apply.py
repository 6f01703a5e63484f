"""How a stored event changes its run and task: pure functions, unit-tested without a database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agentbus.contracts import events as ev
from agentbus.contracts.status import TERMINAL_RUN_STATUSES, next_status

FAILED_STATUSES = frozenset({"failed", "timeout"})


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def apply_event(run: dict[str, Any], event: ev.Event) -> bool:
    """Update `run` (a row as a dict) in place for `event`; True when the run just became terminal.

    Events may arrive out of order when several gateways store them, so a
    non-terminal event older than what the run already shows changes nothing,
    and a terminal status is never left.
    """
    was_terminal = run["status"] in TERMINAL_RUN_STATUSES
    newer = event.seq > (run.get("last_seq") or 0)
    terminal_event = isinstance(event, ev.Completion | ev.Failure | ev.Rejected | ev.Cancelled | ev.Timeout)
    if newer:
        run["last_seq"] = event.seq
    if was_terminal or not (newer or terminal_event):
        return False

    run["status"] = next_status(run["status"], event.__struct_config__.tag)  # type: ignore[arg-type]
    run["updated_at"] = event.timestamp
    match event:
        case ev.AnalysisStart():
            run["started_at"] = run.get("started_at") or event.timestamp
        case ev.PlanReady():
            run["plan"] = event.data.plan
        case ev.ApprovalRequired():
            run["plan"] = event.data.plan
            run["approval"] = None  # a new plan version waits for its own decision
        case ev.RevisionRequested():
            run["approval"] = run.get("approval") or {
                "approved": False,
                "feedback": event.data.feedback,
                "decided_at": _iso(event.timestamp),
                "revise": True,
                "plan_version": event.data.version,
            }
        case ev.Approved() | ev.Rejected():
            run["approval"] = run.get("approval") or {
                "approved": isinstance(event, ev.Approved),
                "feedback": event.data.feedback,
                "decided_at": _iso(event.timestamp),
            }
        case ev.Progress():
            run["progress"] = float(event.data.progress_percent)
        case ev.Completion():
            run["results"] = event.data.results
            run["progress"] = 100.0
        case ev.Failure():
            run["error_message"] = event.data.error
        case ev.Cancelled():
            run["error_message"] = f"cancelled: {event.data.reason}"
        case ev.Timeout():
            phase = "waiting for approval" if event.data.phase == "approval" else "executing"
            run["error_message"] = f"timed out while {phase}"

    if run["status"] in TERMINAL_RUN_STATUSES:
        run["completed_at"] = event.timestamp
        stats = ev.stats_of(event)
        if stats is not None:
            run["duration"] = stats.duration
        elif isinstance(event, ev.Completion):
            run["duration"] = event.data.duration
        elif run.get("started_at"):
            run["duration"] = (event.timestamp - run["started_at"]).total_seconds()
        run["started_at"] = run.get("started_at") or event.timestamp
        return True
    return False


def task_counters(run: dict[str, Any]) -> dict[str, Any]:
    """Column increments/values for the task of a run that just ended."""
    return {
        "succeeded": 1 if run["status"] == "completed" else 0,
        "failed": 1 if run["status"] in FAILED_STATUSES else 0,
        "last_run_duration": run.get("duration"),
        "last_error": run.get("error_message") if run["status"] != "completed" else None,
    }

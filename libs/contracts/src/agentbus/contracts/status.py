"""Run statuses and the transitions between them (docs/api.md, Runs)."""

from typing import Literal, get_args

RunStatus = Literal[
    "pending", "running", "awaiting_approval", "completed", "failed", "rejected", "cancelled", "timeout"
]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
TERMINAL_RUN_STATUSES: frozenset[str] = frozenset({"completed", "failed", "rejected", "cancelled", "timeout"})

# Which statuses each event type moves a run to (None: status unchanged).
STATUS_AFTER_EVENT: dict[str, str | None] = {
    "analysis_start": "running",
    "plan_ready": None,
    "approval_required": "awaiting_approval",
    "approved": "running",
    "rejected": "rejected",
    "progress": "running",
    "revision_requested": "running",
    "artifact": None,
    "completion": "completed",
    "failure": "failed",
    "cancelled": "cancelled",
    "timeout": "timeout",
}


def next_status(current: str, event_type: str) -> str:
    """The status a run has after an event; a terminal run never leaves its status."""
    if current in TERMINAL_RUN_STATUSES:
        return current
    target = STATUS_AFTER_EVENT.get(event_type)
    return current if target is None else target

"""What a batch of events changes in the approvals inbox, as typed values (pure; `effects.py` folds
the batch's events through `ApprovalChanges`, and both forms of the batch transaction write them).

- `approval_required` adds a request (`ApprovalRow`) whose id comes from its run and plan version,
  so a request stored twice (an event redelivered, or emitted again after a runner lost the run)
  is one row (the insert does nothing on a conflict).
- `approved`, `rejected` and `revision_requested` settle the run's pending request, and so do the
  ends of a run that was waiting: `timeout` of the approval phase (`expired`), any other terminal
  event (`cancelled`). A settle (`ApprovalSettle`) only ever changes a `pending` row, so a decision
  the gateway recorded first (with who made it) stays as it is.
- A request settled in the very batch that adds it is added settled (no update); a settle of an
  earlier request is an update, and the batch runs those before its inserts.
- A request that arrives after later events of its run (several gateway copies store batches
  concurrently) is added as those events left it, never as pending once the run moved on.

Only these event types touch the inbox: a batch of progress events costs no statement.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from agentbus.contracts import events as ev
from agentbus.contracts.status import TERMINAL_RUN_STATUSES

# The event types that may change the inbox: any other event costs one set lookup of its type
# (an isinstance against these eight struct classes measured about ten times as much).
EVENTS: frozenset[type[ev.Event]] = frozenset(
    (
        ev.ApprovalRequired,
        ev.Approved,
        ev.Rejected,
        ev.RevisionRequested,
        ev.Timeout,
        ev.Cancelled,
        ev.Failure,
        ev.Completion,
    )
)
# The run's `error_message` after a timeout while waiting (set by `effects.apply_event`).
APPROVAL_TIMED_OUT = "timed out while waiting for approval"


def approval_id(run_id: str, version: int) -> str:
    return hashlib.sha256(f"{run_id}:{version}".encode()).hexdigest()[:32]


class ApprovalRow(NamedTuple):
    id: str
    run_id: str
    task_id: str
    plan: Any
    plan_version: int
    status: str
    requested_at: datetime
    deadline: datetime | None
    decided_at: datetime | None
    decided_by: Any
    feedback: str | None


class ApprovalSettle(NamedTuple):
    """Settle the run's pending request (of this plan version, when given)."""

    run_id: str
    plan_version: int | None
    status: str
    decided_at: datetime
    feedback: str | None


class ApprovalChanges:
    """The inbox changes of one batch, in event order."""

    def __init__(self) -> None:
        self.rows: dict[str, ApprovalRow] = {}  # added by this batch, by id
        self.open: dict[str, str] = {}  # run_id -> id of its pending request added by this batch
        self.settles: list[ApprovalSettle] = []

    def see(self, run: dict[str, Any], event: ev.Event, was_status: str, stale: bool) -> None:
        """`run` as `event` left it; `was_status` its status before; `stale`: a later event of
        the run was stored before this one (a request is then added as the run stands)."""
        match event:
            case ev.ApprovalRequired():
                self._request(run, event, stale or was_status in TERMINAL_RUN_STATUSES)
            case ev.RevisionRequested():
                self._settle(event, event.data.version, "revise_requested", event.data.feedback)
            case ev.Approved():
                self._settle(event, None, "approved", event.data.feedback)
            case ev.Rejected():
                self._settle(event, None, "rejected", event.data.feedback)
            case ev.Timeout() if event.data.phase == "approval":
                self._settle(event, None, "expired", None)
            case _ if was_status == "awaiting_approval":  # the run ended while a request waited
                self._settle(event, None, "cancelled", None)

    def _request(self, run: dict[str, Any], event: ev.ApprovalRequired, stale: bool) -> None:
        d = event.data
        key = approval_id(event.run_id, d.version)
        if key in self.rows:
            return
        status, decided_at, decided_by, feedback = _as_left(run, d.version) if stale else _PENDING
        self.rows[key] = ApprovalRow(
            key,
            event.run_id,
            event.task_id,
            d.plan,
            d.version,
            status,
            event.timestamp,
            _deadline(event),
            decided_at,
            decided_by,
            feedback,
        )
        if status == "pending":
            self.open[event.run_id] = key

    def _settle(self, event: ev.Event, version: int | None, status: str, feedback: str | None) -> None:
        key = self.open.get(event.run_id)
        if key is not None and (version is None or self.rows[key].plan_version == version):
            del self.open[event.run_id]
            self.rows[key] = self.rows[key]._replace(
                status=status, decided_at=event.timestamp, feedback=feedback
            )
        else:
            self.settles.append(ApprovalSettle(event.run_id, version, status, event.timestamp, feedback))


_PENDING: tuple[str, None, None, None] = ("pending", None, None, None)


def _deadline(event: ev.ApprovalRequired) -> datetime:
    return event.timestamp + timedelta(seconds=event.data.timeout_s)


def _as_left(run: dict[str, Any], version: int) -> tuple[str, datetime | None, Any, str | None]:
    """(status, decided_at, decided_by, feedback) of a request of `version` that arrived after the
    run's later events: what those events left."""
    decision = run.get("approval")
    if run["status"] == "awaiting_approval" and not decision:
        return _PENDING
    if decision and decision.get("plan_version") in (None, version):
        at = datetime.fromisoformat(decision["decided_at"].replace("Z", "+00:00"))
        return decided_status(decision), at, decision.get("decided_by"), decision.get("feedback")
    if run["status"] in TERMINAL_RUN_STATUSES:
        expired = run["status"] == "timeout" and run.get("error_message") == APPROVAL_TIMED_OUT
        return ("expired" if expired else "cancelled"), run.get("completed_at"), None, None
    return "revise_requested", None, None, None  # the run went on to a later version


def decided_status(approval: dict[str, Any]) -> str:
    """The status of a request that a decision (a run's `approval` value) settled."""
    if approval.get("approved"):
        return "approved"
    return "revise_requested" if approval.get("revise") else "rejected"

"""What stored events change, as typed values: pure functions, unit-tested without a database.

`Effects.of` is computed once per batch; the SQLite and PostgreSQL forms of the batch
transaction (`store/events.py`) both write these same values.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from agentbus.contracts import events as ev
from agentbus.contracts.artifacts import valid_artifact_name, valid_content_type
from agentbus.contracts.status import TERMINAL_RUN_STATUSES, next_status
from agentbus.gateway.store.approval_effects import (
    APPROVAL_TIMED_OUT,
    ApprovalChanges,
    ApprovalRow,
    ApprovalSettle,
)
from agentbus.gateway.store.approval_effects import EVENTS as INBOX_EVENTS

log = logging.getLogger(__name__)
FAILED_STATUSES = frozenset({"failed", "timeout"})

# The run columns events change (only these are read and written by the batch transaction).
RUN_COLUMNS = (
    "status",
    "plan",
    "progress",
    "results",
    "error_message",
    "started_at",
    "completed_at",
    "duration",
    "approval",
    "approval_deadline",
    "last_seq",
    "updated_at",
)
RUN_READ = ("id", "task_id", *RUN_COLUMNS)  # what the batch reads of a run: a row of `Effects.of`
Batch = list[tuple[ev.Event, bytes]]  # decoded events with the bytes they were published as


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
            run["approval_deadline"] = event.timestamp + timedelta(seconds=event.data.timeout_s)
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
            if event.data.phase == "approval":
                run["error_message"] = APPROVAL_TIMED_OUT
            else:
                run["error_message"] = "timed out while executing"

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


class EventRow(NamedTuple):
    run_id: str
    task_id: str
    seq: int
    event_type: str
    timestamp: datetime
    payload: str


class RunChange(NamedTuple):
    """A run's new state: its id, then `RUN_COLUMNS` in order."""

    id: str
    status: str
    plan: Any
    progress: float
    results: Any
    error_message: str | None
    started_at: datetime | None
    completed_at: datetime | None
    duration: float | None
    approval: Any
    approval_deadline: datetime | None
    last_seq: int
    updated_at: datetime


class TaskStatusChange(NamedTuple):
    """A task shows its latest run's status (only when `run_id` is still its latest run)."""

    task_id: str
    run_id: str
    status: str
    updated_at: datetime


class TaskCounters(NamedTuple):
    """A run of the task ended: one more run, and what it adds to the counters."""

    task_id: str
    succeeded: int
    failed: int
    last_run_duration: float | None
    last_error: str | None
    updated_at: datetime


class ArtifactRow(NamedTuple):
    run_id: str
    task_id: str
    name: str
    size: int
    content_type: str
    created_at: datetime


# artifacts.size is an INTEGER column: 32 bits on PostgreSQL.
_MAX_SIZE = 2**31 - 1


def valid_artifact(d: ev.ArtifactData) -> bool:
    return valid_artifact_name(d.name) and 0 <= d.size <= _MAX_SIZE and valid_content_type(d.content_type)


def event_row(e: ev.Event, raw: bytes) -> EventRow:
    return EventRow(e.run_id, e.task_id, e.seq, e.__struct_config__.tag, e.timestamp, raw.decode())


def once_each(batch: Batch) -> dict[tuple[str, int], tuple[ev.Event, bytes]]:
    """The batch's events by (run_id, seq), once each (a redelivery may sit in the same batch)."""
    fresh: dict[tuple[str, int], tuple[ev.Event, bytes]] = {}
    for event, raw in batch:
        fresh.setdefault((event.run_id, event.seq), (event, raw))
    return fresh


def new_candidates(
    rows: dict[str, dict[str, Any]], batch: Batch
) -> dict[tuple[str, int], tuple[ev.Event, bytes]]:
    """The batch's events of known runs, once each."""
    fresh = once_each(batch)
    for key in [key for key in fresh if key[0] not in rows]:
        log.info("event %s of unknown run %s dropped (deleted?)", key[1], key[0])
        del fresh[key]
    return fresh


class Conflict(NamedTuple):
    """An event whose (run_id, seq) is stored already with other content: a conflicting duplicate."""

    event: ev.Event
    raw: bytes
    stored: str  # the payload stored at that (run_id, seq)


class Stored(NamedTuple):
    """What a batch stored: the new events (with their effects applied), and its conflicts."""

    events: Batch
    conflicts: list[Conflict]
    deliveries: int = 0  # webhook deliveries made in the same transaction (store/webhooks.py)


def duplicates(
    fresh: dict[tuple[str, int], tuple[ev.Event, bytes]], inserted: set[tuple[str, int]]
) -> list[tuple[str, int]]:
    """The (run_id, seq) of the batch's events that were stored already (a redelivery, or not)."""
    return [key for key in fresh if key not in inserted]


def conflicts_of(
    fresh: dict[tuple[str, int], tuple[ev.Event, bytes]], stored: dict[tuple[str, int], str]
) -> list[Conflict]:
    """The duplicates whose stored payload is not theirs: a redelivery has the very same bytes."""
    return [
        Conflict(event, raw, stored[key])
        for key, (event, raw) in fresh.items()
        if key in stored and stored[key] != raw.decode()
    ]


class Effects(NamedTuple):
    """What the newly stored events of a batch change."""

    stored: Batch
    runs: list[RunChange]
    task_statuses: list[TaskStatusChange]
    task_counters: list[TaskCounters]
    artifacts: list[ArtifactRow]
    approvals: list[ApprovalRow]  # requests added (inserted after `approval_settles`)
    approval_settles: list[ApprovalSettle]  # settles of pending requests stored before

    @classmethod
    def of(
        cls,
        rows: dict[str, dict[str, Any]],
        fresh: dict[tuple[str, int], tuple[ev.Event, bytes]],
        inserted: set[tuple[str, int]],
    ) -> Effects:
        """`rows`: the batch's runs (id, task_id and `RUN_COLUMNS`), changed in place; `inserted`:
        the (run_id, seq) of the events that were new (the others were stored and applied before)."""
        stored: Batch = []
        dirty: dict[str, dict[str, Any]] = {}
        ended: list[dict[str, Any]] = []
        artifacts: list[ArtifactRow] = []
        inbox = ApprovalChanges()
        for key, (event, raw) in fresh.items():
            if key not in inserted:
                continue
            stored.append((event, raw))
            run = rows[event.run_id]
            # Only approval and terminal events look at the inbox (progress costs nothing more).
            before = None
            if type(event) in INBOX_EVENTS:
                before = (run["status"], event.seq <= (run.get("last_seq") or 0))
            if apply_event(run, event):
                ended.append(run)
            if before is not None:
                inbox.see(run, event, *before)
            dirty[run["id"]] = run
            if isinstance(event, ev.ArtifactCreated):
                d = event.data
                if valid_artifact(d):
                    artifacts.append(
                        ArtifactRow(
                            event.run_id, event.task_id, d.name, d.size, d.content_type, event.timestamp
                        )
                    )
                else:  # the event stays in the log; the index takes no path, no negative size
                    log.warning(
                        "run %s: artifact %r not indexed: invalid name, size or type", event.run_id, d.name
                    )
        return cls(
            stored=stored,
            runs=[RunChange(r["id"], *(r[c] for c in RUN_COLUMNS)) for r in dirty.values()],
            task_statuses=[
                TaskStatusChange(r["task_id"], r["id"], r["status"], r["updated_at"]) for r in dirty.values()
            ],
            task_counters=[_counters(r) for r in ended],
            artifacts=artifacts,
            approvals=list(inbox.rows.values()),
            approval_settles=inbox.settles,
        )


def _counters(run: dict[str, Any]) -> TaskCounters:
    c = task_counters(run)
    return TaskCounters(
        run["task_id"],
        c["succeeded"],
        c["failed"],
        c["last_run_duration"],
        c["last_error"],
        run["updated_at"],
    )

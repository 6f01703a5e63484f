"""What a batch of events changes in the approvals inbox: computed once per batch, without a database."""

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from agentbus.contracts import events as ev
from agentbus.gateway.schemas import ApprovalStatus
from agentbus.gateway.store.approval_effects import ApprovalSettle, approval_id
from agentbus.gateway.store.approvals import STATUSES
from agentbus.gateway.store.effects import RUN_COLUMNS, Effects

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PLAN = {"steps": ["a"]}


def make(cls, seq, data=None, at=0.0):  # type: ignore[no-untyped-def]
    extra = {"data": data} if data is not None else {}
    return cls(id=f"e{seq}", seq=seq, timestamp=T0 + timedelta(seconds=at), task_id="t", run_id="r", **extra)


def request(seq: int, version: int = 1, at: float = 0.0) -> ev.Event:
    return make(
        ev.ApprovalRequired, seq, ev.ApprovalRequiredData(plan=PLAN, timeout_s=60, version=version), at
    )


def run(status: str = "running", last_seq: int = 2, **fields: Any) -> dict[str, Any]:
    columns = dict.fromkeys(RUN_COLUMNS)  # a run row as the batch reads it
    return {
        **columns,
        "id": "r",
        "task_id": "t",
        "status": status,
        "last_seq": last_seq,
        "progress": 0.0,
        **fields,
    }


def effects_of(row: dict[str, Any], *events: ev.Event) -> Effects:
    fresh = {(e.run_id, e.seq): (e, b"{}") for e in events}
    return Effects.of({"r": row}, fresh, set(fresh))


def test_a_request_adds_a_pending_row_named_by_its_run_and_version() -> None:
    out = effects_of(run(), request(3, version=2, at=5))
    assert out.approval_settles == []
    [row] = out.approvals
    assert row.id == hashlib.sha256(b"r:2").hexdigest()[:32] == approval_id("r", 2)
    assert (row.run_id, row.task_id, row.plan, row.plan_version, row.status) == ("r", "t", PLAN, 2, "pending")
    assert row.requested_at == T0 + timedelta(seconds=5)
    assert row.deadline == row.requested_at + timedelta(seconds=60)
    assert (row.decided_at, row.decided_by, row.feedback) == (None, None, None)


def test_a_request_stored_twice_in_one_batch_is_one_row() -> None:
    out = effects_of(run(), request(3), request(4))
    assert len(out.approvals) == 1


def test_a_request_decided_in_its_own_batch_is_added_decided() -> None:
    out = effects_of(run(), request(3), make(ev.Approved, 4, ev.DecisionData(feedback="go"), at=2))
    [row] = out.approvals
    assert (row.status, row.decided_at, row.feedback) == ("approved", T0 + timedelta(seconds=2), "go")
    assert out.approval_settles == []


def test_decisions_on_earlier_requests_settle_the_pending_row() -> None:
    at = T0 + timedelta(seconds=1)
    cases = [
        (
            make(ev.Approved, 4, ev.DecisionData(feedback="ok"), at=1),
            ApprovalSettle("r", None, "approved", at, "ok"),
        ),
        (
            make(ev.Rejected, 4, ev.DecisionData(feedback="no"), at=1),
            ApprovalSettle("r", None, "rejected", at, "no"),
        ),
        (
            make(ev.Timeout, 4, ev.TimeoutData(phase="approval"), at=1),
            ApprovalSettle("r", None, "expired", at, None),
        ),
        (
            make(ev.Cancelled, 4, ev.CancelledData(reason="user"), at=1),
            ApprovalSettle("r", None, "cancelled", at, None),
        ),
        (
            make(ev.Failure, 4, ev.FailureData(error="reaped"), at=1),
            ApprovalSettle("r", None, "cancelled", at, None),
        ),
    ]
    for event, settle in cases:
        out = effects_of(run("awaiting_approval", 3), event)
        assert out.approvals == [] and out.approval_settles == [settle], event


def test_a_revision_settles_its_version_then_the_next_one_waits() -> None:
    sent_back = make(ev.RevisionRequested, 4, ev.RevisionData(version=1, round=1, feedback="more"), at=1)
    out = effects_of(run("awaiting_approval", 3), sent_back, request(6, version=2, at=3))
    assert out.approval_settles == [
        ApprovalSettle("r", 1, "revise_requested", T0 + timedelta(seconds=1), "more")
    ]
    assert [(a.plan_version, a.status) for a in out.approvals] == [(2, "pending")]


def test_runs_that_were_not_waiting_touch_nothing() -> None:
    progress = make(
        ev.Progress, 3, ev.ProgressData(step=1, total_steps=1, progress_percent=100, current_phase="x")
    )
    done = make(ev.Completion, 4, ev.CompletionData(results=None, duration=1))
    out = effects_of(run(), progress, done)
    assert out.approvals == [] and out.approval_settles == []
    out = effects_of(run(), make(ev.Cancelled, 3, ev.CancelledData(reason="x")))
    assert out.approvals == [] and out.approval_settles == []


def test_a_request_stored_after_later_events_is_added_as_they_left_it() -> None:
    # Cancelled (seq 4) was stored first, by another gateway copy.
    cancelled = run("cancelled", 4, completed_at=T0 + timedelta(seconds=9), error_message="cancelled: x")
    [row] = effects_of(cancelled, request(3)).approvals
    assert (row.status, row.decided_at) == ("cancelled", T0 + timedelta(seconds=9))

    timed_out = run("timeout", 4, error_message="timed out while waiting for approval")
    assert effects_of(timed_out, request(3)).approvals[0].status == "expired"

    # The gateway's decision (with who made it) was stored and the runner acted on it first.
    who = {"id": "k1", "name": "ann"}
    decision = {"approved": True, "feedback": "go", "decided_at": "2026-01-01T00:00:07Z", "decided_by": who}
    [row] = effects_of(run("running", 4, approval=decision), request(3)).approvals
    assert (row.status, row.decided_by, row.feedback) == ("approved", who, "go")
    assert row.decided_at == T0 + timedelta(seconds=7)

    # Still waiting for this very request: it is pending.
    assert effects_of(run("awaiting_approval", 4), request(3)).approvals[0].status == "pending"


def test_the_rest_api_names_every_status_the_store_lists() -> None:
    assert get_args(ApprovalStatus) == STATUSES

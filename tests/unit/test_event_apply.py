"""How events move a stored run: the gateway's pure state rules."""

from datetime import UTC, datetime, timedelta

from agentbus.contracts import events as ev
from agentbus.gateway.store.effects import apply_event, task_counters

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make(cls, seq, data=None, at=0.0):  # type: ignore[no-untyped-def]
    extra = {"data": data} if data is not None else {}
    return cls(id=f"e{seq}", seq=seq, timestamp=T0 + timedelta(seconds=at), task_id="t", run_id="r", **extra)


def fresh() -> dict:
    return {"id": "r", "task_id": "t", "status": "pending", "last_seq": 0, "progress": 0.0}


def test_full_approved_run() -> None:
    run = fresh()
    plan = {"steps": ["a"]}
    assert not apply_event(run, make(ev.AnalysisStart, 1))
    assert run["status"] == "running" and run["started_at"] == T0
    apply_event(run, make(ev.PlanReady, 2, ev.PlanData(plan=plan)))
    apply_event(run, make(ev.ApprovalRequired, 3, ev.ApprovalRequiredData(plan=plan, timeout_s=5)))
    assert run["status"] == "awaiting_approval" and run["plan"] == plan
    apply_event(run, make(ev.Approved, 4, ev.DecisionData(feedback="ok"), at=1))
    assert run["status"] == "running" and run["approval"]["approved"] is True
    apply_event(
        run,
        make(ev.Progress, 5, ev.ProgressData(step=1, total_steps=1, progress_percent=100, current_phase="x")),
    )
    ended = apply_event(run, make(ev.Completion, 6, ev.CompletionData(results=[1], duration=2.5), at=3))
    assert ended and run["status"] == "completed" and run["duration"] == 2.5 and run["results"] == [1]
    assert run["completed_at"] == T0 + timedelta(seconds=3) and run["last_seq"] == 6
    assert task_counters(run) == {"succeeded": 1, "failed": 0, "last_run_duration": 2.5, "last_error": None}


def test_terminal_is_final_and_reported_once() -> None:
    run = fresh()
    apply_event(run, make(ev.AnalysisStart, 1))
    assert apply_event(run, make(ev.Failure, 2, ev.FailureData(error="boom"), at=2))
    assert run["status"] == "failed" and run["duration"] == 2.0
    assert not apply_event(run, make(ev.Completion, 3, ev.CompletionData(results=None, duration=1)))
    assert not apply_event(run, make(ev.Cancelled, 4, ev.CancelledData(reason="x")))
    assert run["status"] == "failed" and run["error_message"] == "boom"
    assert task_counters(run)["failed"] == 1 and task_counters(run)["last_error"] == "boom"


def test_an_older_event_arriving_late_changes_nothing() -> None:
    run = fresh()
    apply_event(run, make(ev.AnalysisStart, 1))
    apply_event(
        run,
        make(ev.Progress, 3, ev.ProgressData(step=2, total_steps=4, progress_percent=50, current_phase="x")),
    )
    apply_event(
        run,
        make(ev.Progress, 2, ev.ProgressData(step=1, total_steps=4, progress_percent=25, current_phase="x")),
    )
    assert run["progress"] == 50 and run["last_seq"] == 3


def test_a_late_terminal_event_still_ends_the_run() -> None:
    run = fresh()
    apply_event(run, make(ev.AnalysisStart, 1))
    apply_event(
        run,
        make(ev.Progress, 3, ev.ProgressData(step=1, total_steps=1, progress_percent=100, current_phase="x")),
    )
    assert apply_event(
        run, make(ev.Timeout, 2, ev.TimeoutData(phase="execution", stats=ev.RunStats(duration=9)))
    )
    assert run["status"] == "timeout" and run["duration"] == 9 and "executing" in run["error_message"]
    assert task_counters(run)["failed"] == 1


def test_rejection_and_cancel_are_neither_success_nor_failure() -> None:
    for cls, data in (
        (ev.Rejected, ev.DecisionData(feedback="no")),
        (ev.Cancelled, ev.CancelledData(reason="r")),
    ):
        run = fresh()
        apply_event(run, make(ev.AnalysisStart, 1))
        assert apply_event(run, make(cls, 2, data))
        c = task_counters(run)
        assert (c["succeeded"], c["failed"]) == (0, 0)

"""Contracts: events round-trip through the tagged union; bad payloads are rejected, not guessed."""

import importlib.util
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from agentbus.contracts import EVENT_TYPES, TERMINAL_EVENT_TYPES, decode_event, encode, subjects
from agentbus.contracts import events as ev
from agentbus.contracts.status import RUN_STATUSES, TERMINAL_RUN_STATUSES, next_status

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
BASE = {"id": "e1", "seq": 1, "timestamp": NOW, "task_id": "t1", "run_id": "r1"}


def test_contract_event_types_are_all_defined() -> None:
    contract = {
        "analysis_start",
        "plan_ready",
        "approval_required",
        "approved",
        "rejected",
        "progress",
        "completion",
        "failure",
        "cancelled",
        "timeout",
    }
    assert contract <= set(EVENT_TYPES)
    assert {"completion", "failure", "rejected", "cancelled", "timeout"} == TERMINAL_EVENT_TYPES


@pytest.mark.parametrize(
    "event",
    [
        ev.AnalysisStart(**BASE),
        ev.PlanReady(**BASE, data=ev.PlanData(plan={"steps": ["a", "b"]})),
        ev.ApprovalRequired(**BASE, data=ev.ApprovalRequiredData(plan={"steps": []}, timeout_s=30)),
        ev.Approved(**BASE, data=ev.DecisionData(feedback="ok")),
        ev.Progress(
            **BASE, data=ev.ProgressData(step=1, total_steps=2, progress_percent=50, current_phase="x")
        ),
        ev.Completion(
            **BASE, data=ev.CompletionData(results={"a": 1}, duration=1.5, stats=ev.RunStats(steps=2))
        ),
        ev.Failure(**BASE, data=ev.FailureData(error="boom")),
        ev.Failure(
            **BASE,
            data=ev.FailureData(error="budget exceeded: x", reason="budget", tokens=45, cost_usd=0.0),
        ),
        ev.Cancelled(**BASE, data=ev.CancelledData(reason="user")),
        ev.Timeout(**BASE, data=ev.TimeoutData(phase="approval")),
    ],
)
def test_event_round_trip_keeps_type_and_wire_shape(event: ev.Event) -> None:
    raw = encode(event)
    back = decode_event(raw)
    assert back == event
    wire = msgspec.json.decode(raw)
    assert wire["event_type"] == event.__struct_config__.tag
    assert wire["timestamp"] == "2026-01-02T03:04:05Z"
    assert {"id", "seq", "event_type", "timestamp", "task_id", "run_id", "message", "data", "v"} <= set(wire)


def test_a_failure_without_a_reason_keeps_its_wire_shape() -> None:
    """The budget fields are optional and omitted when unset: other failures encode as before."""
    data = msgspec.json.decode(encode(ev.Failure(**BASE, data=ev.FailureData(error="boom"))))["data"]
    assert data == {"error": "boom"}
    budget = ev.FailureData(error="b", reason="budget", tokens=0, cost_usd=0.0)
    assert msgspec.json.decode(msgspec.json.encode(budget)) == {
        "error": "b",
        "reason": "budget",
        "tokens": 0,
        "cost_usd": 0.0,
    }


def test_unknown_fields_are_tolerated_for_rolling_upgrades() -> None:
    raw = encode(ev.AnalysisStart(**BASE))
    wire = msgspec.json.decode(raw)
    wire["added_in_v2"] = {"x": 1}
    assert decode_event(msgspec.json.encode(wire)).seq == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"event_type": "no_such_type", "id": "e", "seq": 1}',
        b'{"event_type": "progress", "id": "e", "seq": "one"}',
        b"[]",
    ],
)
def test_bad_payloads_raise(payload: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_event(payload)


def test_terminal_status_is_never_left() -> None:
    for status in TERMINAL_RUN_STATUSES:
        for event_type in EVENT_TYPES:
            assert next_status(status, event_type) == status
    assert set(TERMINAL_RUN_STATUSES) < set(RUN_STATUSES)


def test_status_path_of_an_approved_run() -> None:
    status = "pending"
    seen = []
    for event_type in [
        "analysis_start",
        "plan_ready",
        "approval_required",
        "approved",
        "progress",
        "completion",
    ]:
        status = next_status(status, event_type)
        seen.append(status)
    assert seen == ["running", "running", "awaiting_approval", "running", "running", "completed"]


def test_subject_table_in_docs_matches_contracts() -> None:
    root = Path(__file__).parents[2]
    doc = (root / "docs" / "subjects.md").read_text()
    for row in subjects.SUBJECTS:
        assert f"`{row.subject}`" in doc, f"{row.subject} missing from docs/subjects.md"
        assert row.payload in doc
    # Nothing else either (a removed subject's row must go too): the page is exactly the generated one.
    spec = importlib.util.spec_from_file_location(
        "gen_subjects_doc", root / "scripts" / "gen_subjects_doc.py"
    )
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert doc == gen.render(), "docs/subjects.md is stale: run `python scripts/gen_subjects_doc.py`"


def test_subjects_are_in_the_allowed_namespaces() -> None:
    for row in subjects.SUBJECTS:
        assert row.subject.split(".")[0] in {"task", "run", "events"}, row.subject

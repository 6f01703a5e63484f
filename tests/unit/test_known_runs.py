"""What PostgreSQL's event batch sends the one-statement way (`store/known_runs.py`): only a
remembered run's new events whose effects are its own columns; everything else the locking way."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from agentbus.contracts import encode
from agentbus.contracts import events as ev
from agentbus.gateway.store.known_runs import KnownRuns


def row(run_id: str, last_seq: int, status: str = "running") -> dict[str, Any]:
    return {"id": run_id, "task_id": "t", "status": status, "last_seq": last_seq, "progress": 0.0}


def event(run_id: str, seq: int, cls: type[ev.Event] = ev.Progress) -> tuple[ev.Event, bytes]:
    data: Any = ev.ProgressData(step=1, total_steps=2, progress_percent=50, current_phase="executing")
    if cls is ev.Completion:
        data = ev.CompletionData(results=None, duration=1.0)
    elif cls is ev.AnalysisStart:
        data = ev.Empty()
    e = cls(id=uuid.uuid4().hex, seq=seq, timestamp=datetime.now(UTC), task_id="t", run_id=run_id, data=data)
    return e, encode(e)


def keys(batch: list[tuple[ev.Event, bytes]]) -> list[tuple[str, int]]:
    return [(e.run_id, e.seq) for e, _ in batch]


def test_only_a_known_runs_newer_events_of_its_own_kinds_go_in_one_statement() -> None:
    known = KnownRuns()
    known.remember(row("a", 3), "100")
    known.remember(row("b", 3), "101")
    known.remember(row("c", 3), "102")
    batch = [
        event("a", 4),
        event("u", 1),  # unknown run
        event("b", 4),
        event("a", 5, ev.AnalysisStart),
        event("b", 3),  # not past last_seq: a redelivery, or an older one
        event("c", 4, ev.Completion),  # changes the task's counters and the inbox
    ]
    rows, xmins, fast, rest = known.split(batch)
    assert keys(fast) == [("a", 4), ("a", 5)]
    assert keys(rest) == [("u", 1), ("b", 4), ("b", 3), ("c", 4)]  # each run whole, in order
    assert xmins == {"a": "100"}
    rows["a"]["progress"] = 99.0  # a copy: the remembered row changes only once written
    assert known.split([event("a", 4)])[0]["a"]["progress"] == 0.0


def test_ended_runs_are_forgotten_and_the_oldest_make_room() -> None:
    known = KnownRuns(size=2)
    known.remember(row("a", 1), "1")
    known.remember(row("b", 1), "2")
    known.remember(row("a", 2), "3")  # remembered again: now the newest
    known.remember(row("c", 1), "4")
    assert known.split([event("a", 3), event("b", 2), event("c", 2)])[1] == {"a": "3", "c": "4"}
    known.remember(row("a", 3, status="completed"), "5")
    known.forget("c")
    assert len(known) == 0

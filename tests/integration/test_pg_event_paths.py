"""PostgreSQL's two ways of storing an event batch (`store/events.py`): the locking transaction,
and the one statement for the next events of a run it remembers (`store/known_runs.py`). Both
must leave the database exactly as the locking way alone does, whatever changed the run between
two batches; the one-statement way must actually be taken for a run's progress events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from agentbus.contracts import encode
from agentbus.contracts import events as ev
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.events import MISSES_OVER
from agentbus.gateway.store.known_runs import KnownRuns
from agentbus.gateway.store.people import AuditEntry
from agentbus.gateway.store.tables import run_events, runs, tasks, webhook_deliveries
from tests.support.gateway_db import engine_with_a_run
from tests.support.servers import create_database

T0 = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)


async def open_store(url: str, remember: bool = True) -> GatewayStore:
    engine = await engine_with_a_run(url, T0, task={"latest_run_id": "r"})
    await engine.dispose()
    store = GatewayStore(url)
    await store.open()
    if not remember:  # every batch the locking way: the reference
        store.events.known = KnownRuns(size=0)
    return store


@pytest.fixture
def two_databases(pg_admin_url: str) -> list[str]:
    return [create_database(pg_admin_url, f"t_{uuid.uuid4().hex[:12]}") for _ in range(2)]


@pytest.fixture
async def pair(two_databases: list[str]) -> AsyncIterator[tuple[GatewayStore, GatewayStore]]:
    """Two databases with the same run: one stored both ways, one the locking way only."""
    both = await open_store(two_databases[0])
    locking = await open_store(two_databases[1], remember=False)
    try:
        yield both, locking
    finally:
        await both.close()
        await locking.close()


@pytest.fixture
def locking_batches(pair: tuple[GatewayStore, GatewayStore], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many batches (or parts of one) the first store sent the locking way."""
    batch = pair[0].events
    calls: list[int] = []
    inner = batch._store

    async def counted(db: Any, events: Any, replace: bool) -> Any:
        calls.append(len(events))
        return await inner(db, events, replace)

    monkeypatch.setattr(batch, "_store", counted)
    return calls


def event(cls: type[ev.Event], seq: int, **fields: Any) -> tuple[ev.Event, bytes]:
    e = cls(
        id=uuid.uuid4().hex,
        seq=seq,
        timestamp=T0 + timedelta(seconds=seq),
        task_id="t",
        run_id="r",
        **fields,
    )
    return e, encode(e)


def progress(seq: int, percent: float) -> tuple[ev.Event, bytes]:
    data = ev.ProgressData(step=seq, total_steps=10, progress_percent=percent, current_phase="executing")
    return event(ev.Progress, seq, data=data)


async def both_ways(pair: tuple[GatewayStore, GatewayStore], batch: list[Any]) -> list[tuple[str, int]]:
    stored = [await store.store_events(batch) for store in pair]
    keys = [[(e.run_id, e.seq) for e, _ in s.events] for s in stored]
    assert keys[0] == keys[1]
    return keys[0]


async def state(store: GatewayStore) -> tuple[Any, ...]:
    """Everything a batch may change, as stored."""
    async with store.engine.connect() as conn:
        run = (await conn.execute(select(runs).where(runs.c.id == "r"))).one()._asdict()
        task = (await conn.execute(select(tasks).where(tasks.c.id == "t"))).one()._asdict()
        logged = (await conn.execute(select(run_events.c.seq, run_events.c.payload).order_by("seq"))).all()
        deliveries = (await conn.execute(select(webhook_deliveries.c.seq).order_by("seq"))).all()
    return run, task, [tuple(r) for r in logged], [tuple(r) for r in deliveries]


async def test_a_runs_progress_takes_one_statement_and_stores_what_the_lock_would(
    pair: tuple[GatewayStore, GatewayStore], locking_batches: list[int]
) -> None:
    plan = ev.PlanData(plan={"steps": ["a", "b"]})
    assert await both_ways(pair, [event(ev.AnalysisStart, 1)]) == [("r", 1)]
    assert locking_batches == [1]  # not known yet: locked, read, and remembered
    assert await both_ways(pair, [event(ev.PlanReady, 2, data=plan), progress(3, 10)]) == [("r", 2), ("r", 3)]
    for seq in range(4, 9):
        assert await both_ways(pair, [progress(seq, seq * 10.0)]) == [("r", seq)]
    assert locking_batches == [1]  # every later batch in one statement
    assert await state(pair[0]) == await state(pair[1])
    run, task, logged, _ = await state(pair[0])
    assert (run["last_seq"], run["progress"], run["plan"], run["status"]) == (
        8,
        80.0,
        {"steps": ["a", "b"]},
        "running",
    )
    assert (task["status"], task["updated_at"]) == ("running", T0 + timedelta(seconds=8))
    assert [seq for seq, _ in logged] == list(range(1, 9))


async def test_a_run_changed_meanwhile_is_stored_the_locking_way(
    pair: tuple[GatewayStore, GatewayStore], locking_batches: list[int]
) -> None:
    await both_ways(pair, [event(ev.AnalysisStart, 1)])
    await both_ways(pair, [progress(2, 20)])
    for store in pair:  # what a cancel request or another gateway copy could do between batches
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE runs SET error_message = 'changed', progress = 5 WHERE id = 'r'"))
    assert await both_ways(pair, [progress(3, 30)]) == [("r", 3)]
    assert locking_batches == [1, 1]  # the one statement left it; the lock read what changed
    assert await state(pair[0]) == await state(pair[1])
    run = (await state(pair[0]))[0]
    assert (run["error_message"], run["progress"], run["last_seq"]) == ("changed", 30.0, 3)
    assert await both_ways(pair, [progress(4, 40)]) == [("r", 4)]
    assert locking_batches == [1, 1]  # remembered again, as the lock wrote it


async def test_redeliveries_older_events_and_endings_take_the_lock(
    pair: tuple[GatewayStore, GatewayStore], locking_batches: list[int]
) -> None:
    first = [event(ev.AnalysisStart, 1), progress(2, 20)]
    await both_ways(pair, first)
    late = progress(4, 40)
    assert await both_ways(pair, [late]) == [("r", 4)]
    assert await both_ways(pair, [late, progress(3, 30)]) == [("r", 3)]  # a redelivery, an older one
    done = event(ev.Completion, 5, data=ev.CompletionData(results={"ok": True}, duration=1.5))
    assert await both_ways(pair, [progress(6, 60), done]) == [("r", 6), ("r", 5)]
    assert locking_batches == [2, 2, 2]
    assert await state(pair[0]) == await state(pair[1])
    run, task, _, _ = await state(pair[0])
    assert (run["status"], task["total_runs"], task["successful_runs"]) == ("completed", 1, 1)
    assert len(pair[0].events.known) == 0  # an ended run is forgotten


async def test_events_a_webhook_wants_take_the_lock_and_are_delivered(
    pair: tuple[GatewayStore, GatewayStore], locking_batches: list[int]
) -> None:
    await both_ways(pair, [event(ev.AnalysisStart, 1)])
    await both_ways(pair, [progress(2, 20)])
    for store in pair:
        values = {
            "id": uuid.uuid4().hex,
            "url": "http://127.0.0.1:9/hook",
            "events": ["progress"],
            "secret": "s" * 32,
            "created_at": T0,
        }
        audit = AuditEntry(
            T0, {"id": "admin", "name": "admin", "role": "admin"}, "webhook.create", "webhook", values["id"]
        )
        await store.webhooks.create(values, audit)
    deliveries = [(await store.store_events([progress(3, 30)])).deliveries for store in pair]
    assert deliveries == [1, 1]
    assert locking_batches == [1, 1]
    assert (await state(pair[0]))[3] == [(3,)]


async def test_the_one_statement_stops_trying_while_another_writer_keeps_changing_the_runs(
    pair: tuple[GatewayStore, GatewayStore], locking_batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gateway copies sharing a run's events: each would find the run changed by the other."""
    batch = pair[0].events
    tries: list[int] = []
    inner = batch._store_fast

    async def counted(*args: Any) -> Any:
        tries.append(1)
        return await inner(*args)

    monkeypatch.setattr(batch, "_store_fast", counted)
    await pair[0].store_events([event(ev.AnalysisStart, 1)])
    for seq in range(2, MISSES_OVER + 12):
        async with pair[0].engine.begin() as conn:  # the other copy's write
            await conn.execute(text("UPDATE runs SET updated_at = now() WHERE id = 'r'"))
        assert await both_ways(pair, [progress(seq, seq)]) == [("r", seq)]
    assert len(tries) == MISSES_OVER  # then off: the locking way alone, one round trip less each
    assert len(locking_batches) == MISSES_OVER + 11
    assert (await state(pair[0]))[0]["last_seq"] == MISSES_OVER + 11

"""The hub's stored-log lookups on a real database (SQLite and PostgreSQL).

A client's first sight of a run asks what it missed since it connected. A thousand clients see a
run's first event at once; they must each get their own answer, from one look at the log.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, insert

from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.tables import run_events
from agentbus.gateway.streams.hub import Hub
from tests.support.gateway_db import engine_with_a_run

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str):
    engine = await engine_with_a_run(database_url, T0)
    async with engine.begin() as conn:
        # seq n happened at T0 + n seconds; seq 5 carries an earlier clock than seq 4 (clocks of two runners).
        moments = {n: T0 + timedelta(seconds=n) for n in range(1, 9)}
        moments[5] = T0 + timedelta(seconds=3.5)
        await conn.execute(
            insert(run_events),
            [
                {
                    "run_id": "r",
                    "task_id": "t",
                    "seq": n,
                    "event_type": "progress",
                    "timestamp": ts,
                    "payload": "{}",
                }
                for n, ts in moments.items()
            ],
        )
    await engine.dispose()
    store = GatewayStore(database_url)
    yield store
    await store.close()


async def test_concurrent_first_sightings_share_one_look_and_each_get_their_own_answer(store) -> None:
    engine = store.engine
    hub = Hub(store, heartbeat_s=10, queue_size=10)
    # Subscribed at T0 + 0.5 s, 1.5 s, ... 9.5 s (set by hand: a subscription takes the real clock).
    clients = [hub.subscribe() for _ in range(10)]
    for i, client in enumerate(clients):
        client.connected_at = T0 + timedelta(seconds=i + 0.5)
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        answers = await asyncio.gather(*(hub.last_seq_before("r", c.connected_at) for c in clients))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    # Before T0+3.5 s only seqs 1..3 and 5 had happened; before T0+4.5 s, 1..5.
    assert answers == [0, 1, 2, 3, 5, 5, 6, 7, 8, 8]
    direct = [await store.last_seq_before("r", c.connected_at) for c in clients]
    assert answers == direct
    run_event_queries = [s for s in statements if "run_events" in s]
    assert 1 <= len(run_event_queries) <= 2, run_event_queries  # one look for all ten, not ten

"""A task's `max_concurrent_runs`, the gateway alone, in-process, on both databases.

No runner runs here (nothing consumes `run.start`): what the gateway queued is read from the work
queue stream itself, and run events are published the way a runner does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import nats
import pytest
from litestar.testing import AsyncTestClient
from nats.js.errors import NotFoundError
from sqlalchemy import select, update

from agentbus.common.db import make_engine
from agentbus.contracts import RunControl, subjects
from agentbus.contracts import events as ev
from agentbus.gateway.app import create_app
from agentbus.gateway.settings import Settings
from agentbus.gateway.store.tables import runs
from tests.integration.conftest import LOCAL
from tests.integration.test_gateway import Emitter, new_run, new_task
from tests.support.fake_runner import FakeRunnerInfo
from tests.support.servers import NatsServer
from tests.support.waiting import eventually


def settings(own_nats: NatsServer, database_url: str, reaper_interval_s: float = 60.0) -> Settings:
    return Settings(
        nats_url=own_nats.url,
        database_url=database_url,
        request_timeout_s=0.5,
        reaper_interval_s=reaper_interval_s,
    )


@pytest.fixture
async def client(
    own_nats: NatsServer, database_url: str, runner_info: FakeRunnerInfo
) -> AsyncIterator[AsyncTestClient]:
    """The gateway, its reaper not coming round during a test: the ends of runs release."""
    async with AsyncTestClient(app=create_app(settings(own_nats, database_url)), base_url=LOCAL) as c:
        yield c


@pytest.fixture
async def js(own_nats: NatsServer):  # type: ignore[no-untyped-def]
    nc = await nats.connect(own_nats.url)
    yield nc.jetstream()
    await nc.drain()


async def queued(js, run_ids: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    """Which of these runs have a start message in the work queue, in the order they were queued."""
    info = await js.stream_info(subjects.RUN_COMMANDS_STREAM)
    found: list[str] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(subjects.RUN_COMMANDS_STREAM, seq)
        except NotFoundError:
            continue
        if msg.subject.startswith(subjects.RUN_START_KIND_PREFIX + "."):
            run_id = msgspec.json.decode(msg.data)["run_id"]
            if run_id in run_ids:
                found.append(run_id)
    return found


async def held(database_url: str, run_ids: list[str]) -> list[str]:
    """Which of these runs the database marks held, in run-number order."""
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(runs.c.id).where(runs.c.id.in_(run_ids), runs.c.held).order_by(runs.c.run_number)
            )
            return list(rows.scalars())
    finally:
        await engine.dispose()


async def end(js, task_id: str, run_id: str) -> None:  # type: ignore[no-untyped-def]
    """The run starts and completes, as a runner reports it."""
    e = Emitter(js, task_id, run_id)
    await e.emit(ev.AnalysisStart)
    await e.emit(ev.Completion, data=ev.CompletionData(results={}, duration=0.1))


async def five_runs(client: AsyncTestClient, limit: int | None = 2) -> tuple[dict, list[str]]:
    task = await new_task(client, max_concurrent_runs=limit)
    created = await asyncio.gather(*(new_run(client, task["id"]) for _ in range(5)))  # at once
    created.sort(key=lambda r: r["run_number"])
    assert all(r["status"] == "pending" for r in created)
    return task, [r["id"] for r in created]


async def test_runs_over_the_limit_wait_held_and_start_in_creation_order(
    client: AsyncTestClient,
    js,  # type: ignore[no-untyped-def]
    database_url: str,
) -> None:
    task, ids = await five_runs(client)
    # Created concurrently, admitted one at a time under the task's lock: the first two only.
    assert await queued(js, ids) == ids[:2]
    assert await held(database_url, ids) == ids[2:]
    page = (await client.get(f"/api/runs?task_id={task['id']}&status=pending")).json()
    assert page["total"] == 5, "held runs are pending runs of their task"

    await end(js, task["id"], ids[0])

    async def third_queued() -> bool:
        return await queued(js, ids) == ids[:3]

    await eventually(third_queued, what="the oldest held run queued as the first run ended")
    assert await held(database_url, ids) == ids[3:]
    await end(js, task["id"], ids[2])  # ends before the second: the next held run takes its slot
    await end(js, task["id"], ids[1])

    async def all_queued() -> bool:
        return await queued(js, ids) == ids

    await eventually(all_queued, what="every run queued, in creation order")
    assert await held(database_url, ids) == []
    # The last two are live: a run created now waits, held.
    late = await new_run(client, task["id"])
    assert await held(database_url, [late["id"]]) == [late["id"]]


async def test_a_task_without_a_limit_holds_nothing(
    client: AsyncTestClient,
    js,  # type: ignore[no-untyped-def]
    database_url: str,
) -> None:
    _task, ids = await five_runs(client, limit=None)
    assert sorted(await queued(js, ids)) == sorted(ids)
    assert await held(database_url, ids) == []


async def test_raising_or_clearing_the_limit_releases_at_once(
    client: AsyncTestClient,
    js,  # type: ignore[no-untyped-def]
    database_url: str,
) -> None:
    task, ids = await five_runs(client, limit=1)
    assert await queued(js, ids) == ids[:1]
    r = await client.patch(f"/api/tasks/{task['id']}", json={"max_concurrent_runs": 3})
    assert r.status_code == 200 and r.json()["max_concurrent_runs"] == 3
    # Queued by the time the PATCH answered: nothing to wait for.
    assert await queued(js, ids) == ids[:3]
    r = await client.patch(f"/api/tasks/{task['id']}", json={"max_concurrent_runs": 1})
    assert r.status_code == 200
    assert await queued(js, ids) == ids[:3], "lowering the limit stops nothing already queued"
    r = await client.patch(f"/api/tasks/{task['id']}", json={"max_concurrent_runs": None})
    assert r.status_code == 200 and r.json()["max_concurrent_runs"] is None
    assert await queued(js, ids) == ids
    assert await held(database_url, ids) == []


async def test_cancelling_a_held_run_queues_it_with_its_cancel_and_it_never_takes_a_slot(
    client: AsyncTestClient,
    js,  # type: ignore[no-untyped-def]
    database_url: str,
) -> None:
    task, ids = await five_runs(client, limit=1)
    r = await client.post(f"/api/runs/{ids[3]}/cancel", json={"reason": "not needed"})
    assert r.status_code == 202, r.text
    kv = await js.key_value(subjects.RUN_STATE_BUCKET)
    stored = msgspec.json.decode((await kv.get(subjects.cancel_key(ids[3]))).value, type=RunControl)
    assert stored.kind == "cancel" and stored.reason == "not needed"
    # Queued after its cancel was stored (a runner ends it at once), out of the held ones' line.
    assert await queued(js, ids) == [ids[0], ids[3]]
    assert await held(database_url, ids) == [ids[1], ids[2], ids[4]]
    with pytest.raises(NotFoundError):  # no wake: it names a run no runner has a record of
        await js.get_last_msg(subjects.RUN_COMMANDS_STREAM, subjects.run_wake("scripted"))

    # What the runner that takes it reports: `cancelled`, its only event.
    await Emitter(js, task["id"], ids[3]).emit(ev.Cancelled, data=ev.CancelledData(reason="not needed"))

    async def cancelled() -> bool:
        return (await client.get(f"/api/runs/{ids[3]}")).json()["status"] == "cancelled"

    await eventually(cancelled, what="the held run cancelled")
    await end(js, task["id"], ids[0])

    async def next_queued() -> bool:
        return await queued(js, ids) == [ids[0], ids[3], ids[1]]

    await eventually(next_queued, what="the next held run queued, the cancelled one not again")

    # Deleting a held run: its cancel is stored, it is not queued, and it is gone.
    assert (await client.delete(f"/api/runs/{ids[4]}")).status_code == 204
    assert (await kv.get(subjects.cancel_key(ids[4]))).value
    assert ids[4] not in await queued(js, ids)
    assert (await client.get(f"/api/runs/{ids[4]}")).status_code == 404


@pytest.fixture
async def two_gateways(
    own_nats: NatsServer, database_url: str, runner_info: FakeRunnerInfo
) -> AsyncIterator[tuple[AsyncTestClient, AsyncTestClient]]:
    """Two gateway copies on one database, sharing the event consumer; their reapers do not come
    round during a test (what is checked is the release as runs end, not the safety net)."""
    async with (
        AsyncTestClient(app=create_app(settings(own_nats, database_url)), base_url=LOCAL) as a,
        AsyncTestClient(app=create_app(settings(own_nats, database_url)), base_url=LOCAL) as b,
    ):
        yield a, b


async def test_a_run_held_by_one_gateway_copy_is_released_whichever_copy_stores_the_end(
    two_gateways: tuple[AsyncTestClient, AsyncTestClient],
    js,  # type: ignore[no-untyped-def]
    database_url: str,
) -> None:
    a, b = two_gateways
    # Held through copy a; b has never seen the task. The end events go to either copy's ingest.
    task, ids = await five_runs(a, limit=1)
    for i in range(4):
        await end(js, task["id"], ids[i])

        async def next_queued(n: int = i + 2) -> bool:
            return await queued(js, ids) == ids[:n]

        await eventually(next_queued, timeout=10, what=f"run {i + 2} queued")
    assert (await b.get(f"/api/runs/{ids[4]}")).json()["status"] == "pending"


async def test_held_runs_outlive_the_gateway_that_held_them(
    own_nats: NatsServer,
    runner_info: FakeRunnerInfo,
    js,  # type: ignore[no-untyped-def]
    database_url: str,
) -> None:
    async with AsyncTestClient(app=create_app(settings(own_nats, database_url)), base_url=LOCAL) as a:
        task, ids = await five_runs(a, limit=1)
    # Gone; its first run ends meanwhile. A new copy finds the held runs when it starts.
    await end(js, task["id"], ids[0])
    async with AsyncTestClient(app=create_app(settings(own_nats, database_url)), base_url=LOCAL) as b:

        async def second_queued() -> bool:
            return await queued(js, ids) == ids[:2]

        await eventually(second_queued, timeout=10, what="the held run queued by the new copy")
        await end(js, task["id"], ids[1])

        async def third_queued() -> bool:
            return await queued(js, ids) == ids[:3]

        await eventually(third_queued, timeout=10, what="the next one as the run ended")
        assert (await b.get(f"/api/runs/{ids[3]}")).json()["status"] == "pending"


async def test_the_reaper_releases_what_no_event_did(
    own_nats: NatsServer,
    runner_info: FakeRunnerInfo,
    js,  # type: ignore[no-untyped-def]
    database_url: str,
) -> None:
    """A slot freed without any event reaching a watching copy (here: the run ended straight in the
    database): the reaper's next round releases the held run."""
    app = create_app(settings(own_nats, database_url, reaper_interval_s=0.2))
    async with AsyncTestClient(app=app, base_url=LOCAL):
        async with AsyncTestClient(app=create_app(settings(own_nats, database_url)), base_url=LOCAL) as c:
            _task, ids = await five_runs(c, limit=1)
        engine = make_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(update(runs).where(runs.c.id == ids[0]).values(status="completed"))
        finally:
            await engine.dispose()

        async def second_queued() -> bool:
            return await queued(js, ids) == ids[:2]

        await eventually(second_queued, timeout=10, what="the held run queued by the reaper's round")


async def test_a_run_queued_but_not_yet_marked_so_is_taken_first_by_the_next_release(
    client: AsyncTestClient,
    js,  # type: ignore[no-untyped-def]
    database_url: str,
) -> None:
    """A gateway that died between queuing a held run and marking it queued: the run is queued (and
    running) but still marked held. It takes the first free slot again, nothing overtakes it, and
    queuing it again changes nothing."""
    task, ids = await five_runs(client, limit=1)
    await end(js, task["id"], ids[0])

    async def second_queued() -> bool:
        return await queued(js, ids) == ids[:2]

    await eventually(second_queued)
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:  # as if its unhold had never committed
            await conn.execute(update(runs).where(runs.c.id == ids[1]).values(held=True))
    finally:
        await engine.dispose()
    await Emitter(js, task["id"], ids[1]).emit(ev.AnalysisStart)

    async def running() -> bool:
        return (await client.get(f"/api/runs/{ids[1]}")).json()["status"] == "running"

    await eventually(running)
    late = await new_run(client, task["id"])
    assert await held(database_url, [*ids, late["id"]]) == [*ids[1:], late["id"]]
    # A release (here: the same limit set again) takes it first: its one slot is the running run's.
    assert (
        await client.patch(f"/api/tasks/{task['id']}", json={"max_concurrent_runs": 1})
    ).status_code == 200
    assert await queued(js, ids) == ids[:2], "queued again under the same message id: dropped"
    assert await held(database_url, [*ids, late["id"]]) == [*ids[2:], late["id"]]

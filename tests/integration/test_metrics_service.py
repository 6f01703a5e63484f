"""The metrics service against a real nats-server and both databases.

The nats-server and the durable consumers are shared by the whole session (and
by other services' tests), so every test uses fresh task/run ids and looks
only at those.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client
from sqlalchemy import text

from agentbus.common.db import make_engine
from agentbus.contracts import (
    AnalysisStart,
    Cancelled,
    Completion,
    Event,
    Failure,
    Progress,
    ResourceDeleted,
    RunStats,
    encode,
    subjects,
)
from agentbus.contracts.events import CancelledData, CompletionData, FailureData, ProgressData
from agentbus.contracts.messages import (
    ERROR_HEADER,
    MetricOut,
    MetricsGet,
    MetricsPage,
    MetricsQuery,
    MetricsSummary,
    MetricsSummaryQuery,
    Ping,
    Pong,
    ServiceError,
)
from agentbus.metrics.recorder import event_type
from agentbus.metrics.service import MetricsService
from agentbus.metrics.settings import Settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def new_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture
async def service(nats_url: str, database_url: str) -> AsyncIterator[MetricsService]:
    svc = MetricsService(
        Settings(nats_url=nats_url, database_url=database_url, instance=f"test-{new_id()[:8]}")
    )
    try:
        await svc.start()
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.drain()


async def publish(nc: Client, event: Event, msg_id: str | None = None) -> None:
    subject = subjects.run_event(event.task_id, event.run_id, event_type(event))
    msg_id = msg_id or subjects.event_msg_id(event.run_id, event.seq)
    ack = await nc.jetstream().publish(subject, encode(event), headers={"Nats-Msg-Id": msg_id})
    assert not ack.duplicate


async def request(nc: Client, subject: str, payload: Any, reply_type: type) -> Any:
    """A reply of `reply_type`, or the ServiceError when the reply carries the error header."""
    data = payload if isinstance(payload, bytes) else encode(payload)
    msg = await nc.request(subject, data, timeout=5)
    if (msg.headers or {}).get(ERROR_HEADER) == "1":
        return msgspec.json.decode(msg.data, type=ServiceError)
    return msgspec.json.decode(msg.data, type=reply_type)


async def page(nc: Client, **filters: Any) -> MetricsPage:
    return await request(nc, subjects.METRICS_QUERY, MetricsQuery(**filters), MetricsPage)


async def total(nc: Client, **filters: Any) -> int:
    return (await page(nc, limit=0, **filters)).total


async def wait_total(nc: Client, expected: int, **filters: Any) -> None:
    async def check() -> bool:
        got = await total(nc, **filters)
        assert got == expected, f"{got} stored"
        return True

    await eventually(check, what=f"{expected} metrics matching {filters}")


def completion(task: str, run: str, seq: int, at: datetime, stats: RunStats | None, duration: float = 1.0):
    return Completion(
        id=new_id(),
        seq=seq,
        timestamp=at,
        task_id=task,
        run_id=run,
        data=CompletionData(results={"ok": True}, duration=duration, stats=stats),
    )


async def barrier(nc: Client) -> None:
    """Publish a completion for a fresh run and wait until it is stored.

    The events consumer stores in stream order, so everything published before
    it has been handled by then: lets a test assert that something did NOT happen.
    """
    task, run = new_id(), new_id()
    await publish(nc, completion(task, run, 1, T0, RunStats(duration=1, steps=1)))
    await wait_total(nc, 2, run_id=run)


async def publish_two_runs(nc: Client, task: str, run1: str, run2: str) -> None:
    """run1 completes at T0+10s with every stat; run2 fails at T0+20s with the required ones only."""
    await publish(nc, AnalysisStart(id=new_id(), seq=1, timestamp=T0, task_id=task, run_id=run1))
    progress = ProgressData(step=1, total_steps=3, progress_percent=33.3, current_phase="executing")
    await publish(
        nc,
        Progress(
            id=new_id(), seq=2, timestamp=T0 + timedelta(seconds=1), task_id=task, run_id=run1, data=progress
        ),
    )
    stats1 = RunStats(
        duration=2.5,
        steps=3,
        approval_wait=0.5,
        tokens_prompt=100,
        tokens_completion=40,
        cost_usd=0.25,
        agent="scripted",
    )
    await publish(nc, completion(task, run1, 3, T0 + timedelta(seconds=10), stats1))
    failure = Failure(
        id=new_id(),
        seq=1,
        timestamp=T0 + timedelta(seconds=20),
        task_id=task,
        run_id=run2,
        data=FailureData(error="boom", stats=RunStats(duration=4.5, steps=1, agent="scripted")),
    )
    await publish(nc, failure)


async def test_records_and_queries(service: MetricsService, nc: Client) -> None:
    task, run1, run2 = new_id(), new_id(), new_id()
    await publish_two_runs(nc, task, run1, run2)
    await wait_total(nc, 8, task_id=task)

    everything = await page(nc, task_id=task, limit=100)
    assert everything.total == 8 and len(everything.items) == 8
    keys = [(m.timestamp, m.id) for m in everything.items]
    assert keys == sorted(keys)
    by_run_name = {(m.run_id, m.name): m for m in everything.items}
    assert set(by_run_name) == {
        *(
            (run1, n)
            for n in ("duration", "steps", "approval_wait", "tokens_prompt", "tokens_completion", "cost_usd")
        ),
        (run2, "duration"),
        (run2, "steps"),
    }
    duration1 = by_run_name[run1, "duration"]
    assert (duration1.metric_type, duration1.value, duration1.unit) == ("timer", 2.5, "s")
    assert duration1.labels == {"agent": "scripted", "status": "completed"}
    assert duration1.timestamp == T0 + timedelta(seconds=10)
    assert (by_run_name[run1, "steps"].metric_type, by_run_name[run1, "steps"].unit) == ("counter", "steps")
    assert (by_run_name[run1, "approval_wait"].value, by_run_name[run1, "approval_wait"].unit) == (0.5, "s")
    assert (by_run_name[run1, "tokens_prompt"].value, by_run_name[run1, "tokens_prompt"].unit) == (
        100,
        "tokens",
    )
    assert by_run_name[run1, "tokens_completion"].value == 40
    cost = by_run_name[run1, "cost_usd"]
    assert (cost.metric_type, cost.value, cost.unit) == ("gauge", 0.25, "USD")
    assert by_run_name[run2, "duration"].labels == {"agent": "scripted", "status": "failed"}

    # Filters.
    assert await total(nc, run_id=run1) == 6
    assert await total(nc, run_id=run2) == 2
    durations = await page(nc, task_id=task, name="duration")
    assert [(m.run_id, m.value) for m in durations.items] == [(run1, 2.5), (run2, 4.5)]
    assert await total(nc, task_id=task, since=T0 + timedelta(seconds=15)) == 2
    assert await total(nc, task_id=task, until=T0 + timedelta(seconds=10)) == 6
    window = await page(nc, task_id=task, since=T0 + timedelta(seconds=10), until=T0 + timedelta(seconds=20))
    assert window.total == 8
    assert await total(nc, task_id=task, since=T0 + timedelta(seconds=21)) == 0

    # Paging.
    middle = await page(nc, task_id=task, skip=2, limit=3)
    assert (middle.total, middle.skip, middle.limit) == (8, 2, 3)
    assert middle.items == everything.items[2:5]
    assert (await page(nc, task_id=task, skip=7, limit=10)).items == everything.items[7:]

    # Get by id, and 404.
    got = await request(nc, subjects.METRICS_GET, MetricsGet(metric_id=duration1.id), MetricOut)
    assert got == duration1
    missing = await request(nc, subjects.METRICS_GET, MetricsGet(metric_id="nope"), MetricOut)
    assert missing == ServiceError(status_code=404, detail="metric nope not found")

    # Summaries.
    run_summary = await request(
        nc, subjects.METRICS_RUN_SUMMARY, MetricsSummaryQuery(run_id=run1), MetricsSummary
    )
    assert run_summary.run_id == run1 and run_summary.task_id is None
    assert run_summary.metric_count == 6
    assert msgspec.to_builtins(run_summary.metrics["duration"]) == {
        "count": 1,
        "min": 2.5,
        "max": 2.5,
        "avg": 2.5,
        "last": 2.5,
        "sum": 2.5,
        "p50": 2.5,
        "p95": 2.5,
    }
    task_summary = await request(
        nc, subjects.METRICS_TASK_SUMMARY, MetricsSummaryQuery(task_id=task), MetricsSummary
    )
    assert task_summary.task_id == task and task_summary.metric_count == 8
    stats = {name: msgspec.to_builtins(s) for name, s in task_summary.metrics.items()}
    assert stats["duration"] == {
        **{"count": 2, "min": 2.5, "max": 4.5, "avg": 3.5, "last": 4.5},
        **{"sum": 7.0, "p50": 2.5, "p95": 4.5},
    }
    assert stats["steps"] == {
        **{"count": 2, "min": 1.0, "max": 3.0, "avg": 2.0, "last": 1.0},
        **{"sum": 4.0, "p50": 1.0, "p95": 3.0},
    }
    assert stats["cost_usd"] == {
        **{"count": 1, "min": 0.25, "max": 0.25, "avg": 0.25, "last": 0.25},
        **{"sum": 0.25, "p50": 0.25, "p95": 0.25},
    }
    assert set(stats) == {
        "duration",
        "steps",
        "approval_wait",
        "tokens_prompt",
        "tokens_completion",
        "cost_usd",
    }

    # The summary JSON names only the id it was asked about.
    raw = await nc.request(
        subjects.METRICS_TASK_SUMMARY, encode(MetricsSummaryQuery(task_id=task)), timeout=5
    )
    assert set(msgspec.json.decode(raw.data)) == {"task_id", "metric_count", "metrics"}

    unknown = await request(
        nc, subjects.METRICS_RUN_SUMMARY, MetricsSummaryQuery(run_id=new_id()), MetricsSummary
    )
    assert (unknown.metric_count, unknown.metrics) == (0, {})


async def test_terminal_event_without_stats(service: MetricsService, nc: Client) -> None:
    task, done, cancelled = new_id(), new_id(), new_id()
    await publish(nc, completion(task, done, 1, T0, stats=None, duration=7.25))
    await publish(
        nc,
        Cancelled(
            id=new_id(),
            seq=1,
            timestamp=T0,
            task_id=task,
            run_id=cancelled,
            data=CancelledData(reason="user"),
        ),
    )
    await wait_total(nc, 4, task_id=task)
    values = {(m.run_id, m.name): (m.value, m.labels) for m in (await page(nc, task_id=task)).items}
    assert values == {
        (done, "duration"): (7.25, {"agent": "", "status": "completed"}),
        (done, "steps"): (0.0, {"agent": "", "status": "completed"}),
        (cancelled, "duration"): (0.0, {"agent": "", "status": "cancelled"}),
        (cancelled, "steps"): (0.0, {"agent": "", "status": "cancelled"}),
    }


async def test_redelivered_event_is_not_counted_twice(service: MetricsService, nc: Client) -> None:
    task, run = new_id(), new_id()
    event = completion(task, run, 5, T0, RunStats(duration=3, steps=2, cost_usd=0.5))
    await publish(nc, event)
    await wait_total(nc, 3, run_id=run)
    before = await page(nc, run_id=run)

    # Past the server's dedup window (a new msg id), as a runner that re-published after a crash would be.
    await publish(nc, event, msg_id=f"again-{new_id()}")
    await barrier(nc)
    after = await page(nc, run_id=run)
    assert after.total == 3 and after.items == before.items


async def test_deletions_remove_metrics_and_keep_them_gone(service: MetricsService, nc: Client) -> None:
    task, run1, run2 = new_id(), new_id(), new_id()
    await publish_two_runs(nc, task, run1, run2)
    await wait_total(nc, 8, task_id=task)
    js = nc.jetstream()

    await js.publish(subjects.RUN_DELETED, encode(ResourceDeleted(task_id=task, run_id=run1)))
    await wait_total(nc, 0, run_id=run1)
    assert await total(nc, run_id=run2) == 2

    await js.publish(subjects.TASK_DELETED, encode(ResourceDeleted(task_id=task)))
    await wait_total(nc, 0, task_id=task)
    summary = await request(
        nc, subjects.METRICS_TASK_SUMMARY, MetricsSummaryQuery(task_id=task), MetricsSummary
    )
    assert (summary.metric_count, summary.metrics) == (0, {})

    # A terminal event arriving after the deletion (a cancelled live run) does not bring them back.
    late = completion(task, run1, 9, T0 + timedelta(seconds=30), RunStats(duration=1, steps=1))
    await publish(nc, late, msg_id=f"late-{new_id()}")
    await barrier(nc)
    assert await total(nc, task_id=task) == 0


async def test_database_error_is_retried_later(
    service: MetricsService, nc: Client, database_url: str
) -> None:
    js = nc.jetstream()
    engine = make_engine(database_url)
    try:
        # Hide the table from the service: its writes fail like those to a database that is down.
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE metrics RENAME TO metrics_away"))
        info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.METRICS_EVENTS_CONSUMER)
        task, run = new_id(), new_id()
        await publish(nc, completion(task, run, 1, T0, RunStats(duration=1, steps=1)))

        async def redelivered() -> bool:
            now = await js.consumer_info(subjects.EVENTS_STREAM, subjects.METRICS_EVENTS_CONSUMER)
            return (now.num_redelivered or 0) > (info.num_redelivered or 0)

        await eventually(redelivered)  # the service failed, nak'd, and the server sent it again
        error = await request(nc, subjects.METRICS_QUERY, MetricsQuery(run_id=run), MetricsPage)
        assert isinstance(error, ServiceError) and error.status_code == 503
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE metrics_away RENAME TO metrics"))
        await engine.dispose()
    await wait_total(nc, 2, run_id=run)


async def test_bad_payloads_do_not_stop_the_service(service: MetricsService, nc: Client) -> None:
    dead = await nc.subscribe(subjects.EVENTS_DEAD)
    await nc.flush()
    marker = new_id()
    garbage = f"not json {marker}".encode()
    wrong_shape = encode({"event_type": "completion", "id": marker, "seq": "one"})
    await nc.jetstream().publish("events.run.x.y.failure", garbage)
    await nc.jetstream().publish(f"events.run.x.{marker}.completion", wrong_shape)

    # Both are dead-lettered with their subject, and the service keeps recording.
    expected = {(garbage, "events.run.x.y.failure"), (wrong_shape, f"events.run.x.{marker}.completion")}
    seen: set[tuple[bytes, str]] = set()
    deadline = time.monotonic() + 20
    while not expected <= seen and time.monotonic() < deadline:
        try:
            msg = await dead.next_msg(timeout=1)
        except nats.errors.TimeoutError:
            continue
        seen.add((msg.data, (msg.headers or {}).get("Agentbus-Subject", "")))
    assert expected <= seen
    await dead.unsubscribe()

    task, run = new_id(), new_id()
    await publish(nc, completion(task, run, 1, T0, RunStats(duration=1, steps=1)))
    await wait_total(nc, 2, task_id=task)


async def test_unstorable_event_does_not_block_others(
    service: MetricsService, nc: Client, database_url: str
) -> None:
    # PostgreSQL refuses NUL in text: that event can never be stored, the next one must be.
    task, bad_run, good_run = new_id(), new_id(), new_id()
    await publish(nc, completion(task, bad_run, 1, T0, RunStats(duration=1, steps=1, agent="a\x00b")))
    await publish(nc, completion(task, good_run, 1, T0, RunStats(duration=2, steps=2)))
    await wait_total(nc, 2, run_id=good_run)
    stored_bad = await total(nc, run_id=bad_run)
    assert stored_bad == (0 if database_url.startswith("postgresql") else 2)


async def test_bad_requests_get_400(service: MetricsService, nc: Client) -> None:
    cases = [
        (subjects.METRICS_QUERY, b"{not json"),
        (subjects.METRICS_QUERY, encode({"limit": "ten"})),
        (subjects.METRICS_QUERY, encode({"skip": -1})),
        (subjects.METRICS_QUERY, encode({"limit": 100000})),
        (subjects.METRICS_QUERY, encode({"since": "yesterday"})),
        (subjects.METRICS_GET, encode({})),
        (subjects.METRICS_RUN_SUMMARY, encode({"task_id": "t"})),
        (subjects.METRICS_TASK_SUMMARY, encode({"run_id": "r"})),
        (subjects.METRICS_PING, b"[]"),
    ]
    for subject, payload in cases:
        msg = await nc.request(subject, payload, timeout=5)
        assert (msg.headers or {}).get(ERROR_HEADER) == "1", (subject, payload, msg.data)
        error = msgspec.json.decode(msg.data, type=ServiceError)
        assert error.status_code == 400 and error.detail, (subject, payload, error)


async def test_ping(service: MetricsService, nc: Client) -> None:
    pong = await request(nc, subjects.METRICS_PING, Ping(), Pong)
    assert (pong.service, pong.instance) == ("metrics", service.settings.instance)
    assert pong.version


async def test_copies_share_the_work(
    service: MetricsService, nc: Client, nats_url: str, database_url: str
) -> None:
    second = MetricsService(
        Settings(nats_url=nats_url, database_url=database_url, instance=f"test-{new_id()[:8]}")
    )
    await second.start()  # binds to the same durable consumer and queue groups
    try:
        task = new_id()
        runs = [new_id() for _ in range(20)]
        for i, run in enumerate(runs):
            await publish(
                nc, completion(task, run, 1, T0 + timedelta(seconds=i), RunStats(duration=i, steps=1))
            )
        await wait_total(nc, 40, task_id=task)
        assert (await total(nc, task_id=task, name="duration")) == 20
    finally:
        await second.stop()

    # The first copy carries on alone.
    run = new_id()
    await publish(nc, completion(task, run, 1, T0, RunStats(duration=1, steps=1)))
    await wait_total(nc, 2, run_id=run)

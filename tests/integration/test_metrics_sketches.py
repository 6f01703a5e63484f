"""Reports and series over hours already counted into the sketches, on both databases, checked
against values computed here from what was sent: counts, sums, minima, maxima, means, last values and
outcomes exact; p50/p95 within 1% (relative) of the nearest-rank value. Ranges that start and end
inside an hour read those ends raw; a row that arrives late for a counted hour is counted next round;
deleting a task takes it out of every sketch."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from sqlalchemy import func, select

from agentbus.contracts import ResourceDeleted, encode, subjects
from agentbus.contracts.messages import MetricsReport, MetricsSeries, MetricsSeriesQuery
from agentbus.metrics.models import metrics
from agentbus.metrics.service import MetricsService
from agentbus.metrics.settings import Settings
from agentbus.metrics.sketches import ALPHA, aggregate
from tests.integration import test_metrics_service as base
from tests.integration.test_metrics_reports import OUTCOME_EVENTS, nearest_rank, publish_runs, report, rows_of
from tests.integration.test_metrics_service import new_id, request, wait_total

nc = base.nc


@pytest.fixture
async def service(nats_url: str, database_url: str) -> AsyncIterator[MetricsService]:
    """A copy whose upkeep runs once, at start: the rounds that count rows are this test's calls."""
    svc = MetricsService(
        Settings(
            nats_url=nats_url,
            database_url=database_url,
            instance=f"test-{new_id()[:8]}",
            upkeep_interval_s=86400,
        )
    )
    try:
        await svc.start()
        yield svc
    finally:
        await svc.stop()


pytestmark = pytest.mark.timeout(120)
NAMES = ("duration", "steps", "cost_usd", "time_to_plan")


def sketched(sent: list[dict], name: str) -> dict[str, Any]:
    """What sketches answer: exact count/sum/min/max/avg and last; p50/p95 within 1%."""
    rows = rows_of(sent, name)
    values = [v for _, v in rows]
    return {
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "avg": pytest.approx(sum(values) / len(values)),
        "last": max(rows)[1],
        "sum": pytest.approx(sum(values)),
        "p50": pytest.approx(nearest_rank(values, 50), rel=ALPHA),
        "p95": pytest.approx(nearest_rank(values, 95), rel=ALPHA),
    }


def check(got: MetricsReport, sent: list[dict]) -> None:
    assert {n: msgspec.to_builtins(s) for n, s in got.metrics.items()} == {
        n: sketched(sent, n) for n in NAMES
    }
    counts = {o: sum(1 for s in sent if s["outcome"] == o) for o in OUTCOME_EVENTS}
    assert msgspec.to_builtins(got.runs) == {
        "total": len(sent),
        **counts,
        "success_rate": pytest.approx(counts["completed"] / len(sent)),
    }


async def uncounted(service: MetricsService, *tasks: str) -> int:
    """The tasks' raw rows the sketches do not count yet."""
    assert service.engine is not None
    async with service.engine.connect() as conn:
        query = select(func.count()).where(metrics.c.task_id.in_(tasks), ~metrics.c.aggregated)
        return (await conn.execute(query)).scalar_one()


async def series(nc: Client, agent: str, bucket: str, since: datetime, until: datetime) -> list[tuple]:
    q = MetricsSeriesQuery(name="duration", agent=agent, since=since, until=until, bucket=bucket)
    got = await request(nc, subjects.METRICS_SERIES, q, MetricsSeries)
    return [(int(p.t.timestamp()), p.count, p.min, p.max, p.sum, p.p95) for p in got.points]


def expected_series(sent: list[dict], width: int) -> list[tuple]:
    buckets: dict[int, list[float]] = {}
    for at, v in rows_of(sent, "duration"):
        buckets.setdefault(int(at.timestamp()) // width * width, []).append(v)
    return [
        (t, len(vs), min(vs), max(vs), pytest.approx(sum(vs)), pytest.approx(nearest_rank(vs, 95), rel=ALPHA))
        for t, vs in sorted(buckets.items())
    ]


async def test_reports_and_series_over_counted_hours(service: MetricsService, nc: Client) -> None:
    # Two days and a bit, 37 s apart, starting mid-hour; closed long ago.
    start = datetime(2021, 3, 1, 10, 17, tzinfo=UTC) + timedelta(days=random.randrange(300))
    task, other, agent = new_id(), new_id(), f"k{new_id()[:8]}"
    sent = await publish_runs(nc, task, agent, start, 5000, seed=11)
    kept = await publish_runs(nc, other, agent, start + timedelta(seconds=11), 300, seed=12)
    await wait_total(nc, 4 * 5000, task_id=task)
    await wait_total(nc, 4 * 300, task_id=other)
    assert service.engine is not None
    await aggregate(service.engine)
    assert await uncounted(service, task, other) == 0

    everything = sent + kept
    check(await report(nc, agent=agent), everything)
    # Both ends inside an hour: those partial hours from the raw rows, whole days and hours sketched.
    since, until = start + timedelta(hours=5, minutes=29), start + timedelta(days=1, hours=20, minutes=3)
    inside = [s for s in everything if since <= s["at"] <= until]
    check(await report(nc, agent=agent, since=since, until=until), inside)
    assert await series(nc, agent, "1h", since, until) == expected_series(inside, 3600)
    assert await series(nc, agent, "1d", since, until) == expected_series(inside, 86400)

    # A late run for a counted hour: read raw at once, counted into the sketches next round.
    late = await publish_runs(nc, task, agent, start + timedelta(hours=7, seconds=3), 1, seed=13)
    await wait_total(nc, 4 * 5001, task_id=task)
    assert await uncounted(service, task) == 4
    check(await report(nc, agent=agent), everything + late)
    await aggregate(service.engine)
    assert await uncounted(service, task) == 0
    check(await report(nc, agent=agent), everything + late)

    # Deleting a task takes it out of the sketches: the other task's runs remain, exactly.
    await nc.jetstream().publish(subjects.TASK_DELETED, encode(ResourceDeleted(task_id=task)))
    await wait_total(nc, 0, task_id=task)
    check(await report(nc, agent=agent), kept)
    assert await uncounted(service, other) == 4 * 300  # the other task's rows, to be counted again
    await aggregate(service.engine)
    assert await uncounted(service, other) == 0
    check(await report(nc, agent=agent), kept)
    assert await series(nc, agent, "1h", start, start + timedelta(days=3)) == expected_series(kept, 3600)

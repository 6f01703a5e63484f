"""Retention of the metrics service: raw rows older than the retention age become hourly roll-ups,
and ranges over them still answer, on both databases; and its events consumer's filter.

A task's summary answers from its roll-ups: exact counts, sums, minima, maxima, means and last
values; p50/p95 are the count-weighted mean of the roll-up rows' own nearest-rank percentiles
(computed here the same way). Reports and series answer from the sketches: exact but for p50/p95,
which are within 1% of the nearest-rank value (relative).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from agentbus.common.bus import ensure_streams
from agentbus.contracts import ResourceDeleted, RunStats, encode, subjects
from agentbus.contracts.messages import MetricsSeries, MetricsSeriesQuery, MetricsSummary, MetricsSummaryQuery
from agentbus.metrics.service import MetricsService
from agentbus.metrics.settings import Settings
from agentbus.metrics.sketches import ALPHA
from tests.integration import test_metrics_service as base
from tests.integration.test_metrics_reports import OUTCOME_EVENTS, nearest_rank, publish_runs, report, rows_of
from tests.integration.test_metrics_service import new_id, publish, request, wait_total
from tests.integration.test_metrics_sketches import sketched
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

# The same fixtures: a metrics service on a fresh database of each kind, and a NATS client.
service = base.service
nc = base.nc


@pytest.fixture
async def retaining(
    nats_url: str, database_url: str
) -> AsyncIterator[Callable[[], Awaitable[MetricsService]]]:
    """Starts a copy that rolls up raw rows older than 7 days, checking every 0.1 s."""
    started: list[MetricsService] = []

    async def start() -> MetricsService:
        svc = MetricsService(
            Settings(
                nats_url=nats_url,
                database_url=database_url,
                instance=f"test-{new_id()[:8]}",
                retention_days=7,
                upkeep_interval_s=0.1,
            )
        )
        started.append(svc)
        await svc.start()
        return svc

    try:
        yield start
    finally:
        for svc in started:
            await svc.stop()


def rolled(sent: list[dict], name: str) -> dict[tuple[int, str], list[float]]:
    """The values of one name by roll-up row: (hour, outcome) within this test's task and agent."""
    out: dict[tuple[int, str], list[float]] = {}
    for s in sent:
        out.setdefault((int(s["at"].timestamp()) // 3600 * 3600, s["outcome"]), []).append(
            float(getattr(s["stats"], name))
        )
    return out


def weighted(groups: list[list[float]], p: int) -> Any:
    """The estimate over roll-ups: each row's nearest-rank percentile, weighted by its count."""
    n = sum(len(g) for g in groups)
    return pytest.approx(sum(nearest_rank(g, p) * len(g) for g in groups) / n)


def estimate(sent: list[dict], name: str) -> dict[str, Any]:
    """What roll-ups answer for these (all rolled-up) runs: exact count/sum/min/max/avg and last,
    and p50/p95 as weighted()."""
    rows = rows_of(sent, name)
    values = [v for _, v in rows]
    groups = list(rolled(sent, name).values())
    return {
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "avg": pytest.approx(sum(values) / len(values)),
        "last": max(rows)[1],
        "sum": pytest.approx(sum(values)),
        "p50": weighted(groups, 50),
        "p95": weighted(groups, 95),
    }


async def test_retention_rolls_old_rows_up_and_old_ranges_still_answer(
    service: MetricsService, nc: Client, retaining: Callable[[], Awaitable[MetricsService]]
) -> None:
    start = datetime(2024, 5, 1, 10, 0, tzinfo=UTC) + timedelta(days=random.randrange(200))
    task, agent = new_id(), f"o{new_id()[:8]}"
    sent = await publish_runs(nc, task, agent, start, 300, seed=7)  # 37 s apart: about 3 hours
    end = start + timedelta(hours=4)
    await wait_total(nc, 4 * 300, task_id=task)  # recorded by a copy that keeps raw rows
    await retaining()  # a copy that rolls them up

    async def rolled_up() -> bool:
        assert await base.total(nc, task_id=task) == 0
        return True

    await eventually(rolled_up, what="the raw rows rolled up")

    summary = await request(
        nc, subjects.METRICS_TASK_SUMMARY, MetricsSummaryQuery(task_id=task), MetricsSummary
    )
    names = ("duration", "steps", "cost_usd", "time_to_plan")
    for n in names:
        got_stat, want = msgspec.to_builtins(summary.metrics[n]), estimate(sent, n)
        assert {k: (got_stat[k], want[k]) for k in want if got_stat[k] != want[k]} == {}, n
    got = await report(nc, agent=agent, since=start, until=end)
    counts = {o: sum(1 for s in sent if s["outcome"] == o) for o in OUTCOME_EVENTS}
    assert msgspec.to_builtins(got.runs) == {
        "total": 300,
        **counts,
        "success_rate": pytest.approx(counts["completed"] / 300),
    }
    assert msgspec.to_builtins(got.metrics["duration"]) == sketched(sent, "duration")

    # Hourly series points over rolled-up hours: exact but for p95 (within 1%).
    series = await request(
        nc,
        subjects.METRICS_SERIES,
        MetricsSeriesQuery(name="duration", agent=agent, since=start, until=end, bucket="1h"),
        MetricsSeries,
    )
    groups = rolled(sent, "duration")
    hours = sorted({h for h, _ in groups})
    expected = []
    for h in hours:
        parts = [g for (hour, _), g in groups.items() if hour == h]
        values = [v for g in parts for v in g]
        expected.append(
            (
                h,
                len(values),
                min(values),
                max(values),
                pytest.approx(sum(values)),
                pytest.approx(nearest_rank(values, 95), rel=ALPHA),
            )
        )
    assert [(int(p.t.timestamp()), p.count, p.min, p.max, p.sum, p.p95) for p in series.points] == expected

    # A late event for a rolled-up hour is merged into it on the next round.
    late = await publish_runs(nc, task, agent, start + timedelta(seconds=5), 1, seed=8)
    sent += late

    async def merged() -> bool:
        again = await report(nc, agent=agent, since=start, until=end)
        assert again.runs.total == 301 and await base.total(nc, task_id=task) == 0
        return True

    await eventually(merged, what="the late run recorded and rolled up")
    durations = (await report(nc, agent=agent, since=start, until=end)).metrics["duration"]
    assert (durations.count, durations.sum) == (
        301,
        pytest.approx(sum(v for _, v in rows_of(sent, "duration"))),
    )

    # Deleting the task deletes its roll-ups too.
    await nc.jetstream().publish(subjects.TASK_DELETED, encode(ResourceDeleted(task_id=task)))

    async def deleted() -> bool:
        gone = await report(nc, agent=agent, since=start, until=end)
        assert (gone.metric_count, gone.runs.total) == (0, 0)
        return True

    await eventually(deleted, what="the roll-ups deleted with the task")


async def test_an_unfiltered_consumer_is_narrowed_to_terminal_events(
    own_nats: Any, database_url: str
) -> None:
    client = await nats.connect(own_nats.url)
    try:
        js = client.jetstream()
        await ensure_streams(js)
        old = ConsumerConfig(
            durable_name=subjects.METRICS_EVENTS_CONSUMER,
            deliver_group=subjects.METRICS_EVENTS_CONSUMER,
            deliver_subject=client.new_inbox(),
            filter_subject=subjects.EVENTS_RUN_ALL,
            ack_policy=AckPolicy.EXPLICIT,
        )
        await js.add_consumer(subjects.EVENTS_STREAM, config=old)
        svc = MetricsService(Settings(nats_url=own_nats.url, database_url=database_url, instance="narrow"))
        await svc.start()
        try:
            info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.METRICS_EVENTS_CONSUMER)
            assert sorted(info.config.filter_subjects or []) == sorted(
                f"events.run.*.*.{t}" for t in ("completion", "failure", "rejected", "cancelled", "timeout")
            )
            assert not info.config.filter_subject
            task, run = new_id(), new_id()
            await publish(
                client, base.completion(task, run, 1, datetime(2030, 1, 1, tzinfo=UTC), RunStats(duration=1))
            )
            await wait_total(client, 2, run_id=run)
        finally:
            await svc.stop()
    finally:
        await client.close()

"""The metrics service as docs/api.md (Metrics) describes it: reports (overall, per agent kind),
series, percentiles and metrics posted by hand, checked against values computed here, on both
databases.

Percentiles are nearest-rank: the value at rank ceil(p/100 * n) of the sorted values.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from agentbus.contracts import (
    Cancelled,
    Completion,
    Failure,
    Rejected,
    ResourceDeleted,
    RunStats,
    Timeout,
    encode,
    subjects,
)
from agentbus.contracts.events import CancelledData, CompletionData, DecisionData, FailureData, TimeoutData
from agentbus.contracts.messages import (
    MetricCreate,
    MetricOut,
    MetricsReport,
    MetricsReportQuery,
    MetricsSeries,
    MetricsSeriesQuery,
    MetricsSummary,
    MetricsSummaryQuery,
    ServiceError,
)
from agentbus.metrics.service import MetricsService
from tests.integration import test_metrics_service as base
from tests.integration.test_metrics_service import barrier, new_id, publish, request, wait_total

# The same fixtures: a metrics service on a fresh database of each kind, and a NATS client.
service = base.service
nc = base.nc

pytestmark = pytest.mark.timeout(120)

OUTCOME_EVENTS = {
    "completed": lambda s: (Completion, CompletionData(results={}, duration=s.duration, stats=s)),
    "failed": lambda s: (Failure, FailureData(error="boom", stats=s)),
    "rejected": lambda s: (Rejected, DecisionData(feedback="no", stats=s)),
    "cancelled": lambda s: (Cancelled, CancelledData(reason="user", stats=s)),
    "timeout": lambda s: (Timeout, TimeoutData(phase="execution", stats=s)),
}


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    rank = -(-p * len(ordered) // 100)  # ceil(p * n / 100), in integers
    return ordered[rank - 1]


def expected_stat(rows: list[tuple[datetime, float]]) -> dict[str, Any]:
    values = [v for _, v in rows]
    return {
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "avg": pytest.approx(sum(values) / len(values)),
        "last": max(rows)[1],
        "sum": pytest.approx(sum(values)),
        "p50": nearest_rank(values, 50),
        "p95": nearest_rank(values, 95),
    }


async def publish_runs(nc: Client, task: str, agent: str, start: datetime, n: int, seed: int) -> list[dict]:
    """n terminal events of random outcome and stats (4 metrics each), 37 s apart; what was sent."""
    rnd = random.Random(seed)
    sent = []
    for i in range(n):
        outcome = rnd.choice(list(OUTCOME_EVENTS))
        at = start + timedelta(seconds=37 * i, microseconds=rnd.randrange(10**6))
        stats = RunStats(
            duration=round(rnd.uniform(0, 100), 3),
            steps=rnd.randrange(10),
            cost_usd=round(rnd.uniform(0, 2), 4),
            time_to_plan=round(rnd.uniform(0, 5), 3),
            agent=agent,
        )
        cls, data = OUTCOME_EVENTS[outcome](stats)
        run = new_id()
        await publish(nc, cls(id=new_id(), seq=3, timestamp=at, task_id=task, run_id=run, data=data))
        sent.append({"run": run, "at": at, "outcome": outcome, "stats": stats})
    return sent


def rows_of(sent: list[dict], name: str) -> list[tuple[datetime, float]]:
    return [(s["at"], float(getattr(s["stats"], name))) for s in sent]


async def report(nc: Client, **query: Any) -> MetricsReport:
    return await request(nc, subjects.METRICS_REPORT, MetricsReportQuery(**query), MetricsReport)


async def test_reports_by_agent_and_overall(service: MetricsService, nc: Client) -> None:
    start = datetime(2031, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(3000))
    task = new_id()
    agent_a, agent_b = f"a{new_id()[:8]}", f"b{new_id()[:8]}"
    sent_a = await publish_runs(nc, task, agent_a, start, 23, seed=1)
    sent_b = await publish_runs(nc, task, agent_b, start + timedelta(hours=1), 9, seed=2)
    await wait_total(nc, 4 * 32, task_id=task)

    def check(got: MetricsReport, sent: list[dict]) -> None:
        names = ("duration", "steps", "cost_usd", "time_to_plan")
        assert {n: msgspec.to_builtins(s) for n, s in got.metrics.items()} == {
            n: expected_stat(rows_of(sent, n)) for n in names
        }
        assert got.metric_count == 4 * len(sent)
        counts = {o: sum(1 for s in sent if s["outcome"] == o) for o in OUTCOME_EVENTS}
        assert msgspec.to_builtins(got.runs) == {
            "total": len(sent),
            **counts,
            "success_rate": pytest.approx(counts["completed"] / len(sent)),
        }

    check(await report(nc, agent=agent_a), sent_a)
    check(await report(nc, agent=agent_b), sent_b)
    end = start + timedelta(days=1)
    check(await report(nc, since=start, until=end), sent_a + sent_b)
    # A window: only what falls in it.
    cut = start + timedelta(seconds=37 * 11)
    check(await report(nc, agent=agent_a, since=cut, until=end), [s for s in sent_a if s["at"] >= cut])

    empty = await report(nc, agent=f"none{new_id()[:6]}")
    assert (empty.metric_count, empty.metrics, empty.runs.total, empty.runs.success_rate) == (0, {}, 0, None)

    # Deleting the task removes them from the reports too.
    await nc.jetstream().publish(subjects.TASK_DELETED, encode(ResourceDeleted(task_id=task)))
    await wait_total(nc, 0, task_id=task)
    assert (await report(nc, since=start, until=end)).runs.total == 0


@pytest.mark.parametrize("bucket,width", [("1m", 60), ("5m", 300), ("1h", 3600), ("1d", 86400)])
async def test_series_buckets(service: MetricsService, nc: Client, bucket: str, width: int) -> None:
    start = datetime(2032, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(3000), seconds=1234)
    task, agent = new_id(), f"s{new_id()[:8]}"
    # Spread wider for the wide buckets, so that several are filled and some left out.
    sent = await publish_runs(nc, task, agent, start, 30, seed=width)
    if width >= 3600:
        sent += await publish_runs(nc, task, agent, start + timedelta(seconds=3 * width), 7, seed=3)
    await wait_total(nc, 4 * len(sent), task_id=task)
    got = await request(
        nc,
        subjects.METRICS_SERIES,
        MetricsSeriesQuery(name="duration", agent=agent, bucket=bucket),
        MetricsSeries,
    )
    buckets: dict[int, list[tuple[datetime, float]]] = {}
    for at, value in rows_of(sent, "duration"):
        buckets.setdefault(int(at.timestamp()) // width * width, []).append((at, value))
    expected = []
    for t, rows in sorted(buckets.items()):
        stat = expected_stat(rows)
        expected.append(
            {"t": datetime.fromtimestamp(t, UTC)}
            | {k: stat[k] for k in ("count", "sum", "min", "max", "avg")}
            | {"p95": stat["p95"]}
        )
    assert (got.name, got.bucket) == ("duration", bucket)
    assert [msgspec.structs.asdict(p) for p in got.points] == expected
    # By task, and a window.
    by_task = await request(
        nc,
        subjects.METRICS_SERIES,
        MetricsSeriesQuery(name="duration", task_id=task, bucket=bucket),
        MetricsSeries,
    )
    assert by_task.points == got.points
    since = got.points[-1].t
    tail = await request(
        nc,
        subjects.METRICS_SERIES,
        MetricsSeriesQuery(name="duration", agent=agent, bucket=bucket, since=since),
        MetricsSeries,
    )
    assert tail.points[0].t == since and tail.points[0].count <= got.points[-1].count


async def test_create_metric(service: MetricsService, nc: Client) -> None:
    task, run, agent = new_id(), new_id(), f"c{new_id()[:8]}"
    body = MetricCreate(task_id=task, run_id=run, agent=agent, name="quality.score", value=0.75, unit="ratio")
    created = await request(nc, subjects.METRICS_CREATE, body, MetricOut)
    assert isinstance(created, MetricOut)
    assert (
        created.task_id,
        created.run_id,
        created.name,
        created.value,
        created.metric_type,
        created.unit,
    ) == (
        task,
        run,
        "quality.score",
        0.75,
        "gauge",
        "ratio",
    )
    again = await request(nc, subjects.METRICS_CREATE, body, MetricOut)
    assert isinstance(again, ServiceError) and again.status_code == 409

    summary = await request(nc, subjects.METRICS_RUN_SUMMARY, MetricsSummaryQuery(run_id=run), MetricsSummary)
    assert summary.metrics["quality.score"].p95 == 0.75
    by_agent = await report(nc, agent=agent)
    assert by_agent.metric_count == 1 and by_agent.runs.total == 0  # a hand-made metric is no run's outcome
    series = await request(
        nc, subjects.METRICS_SERIES, MetricsSeriesQuery(name="quality.score", agent=agent), MetricsSeries
    )
    assert [p.count for p in series.points] == [1]

    raw = msgspec.to_builtins(body)
    for bad in ({"name": "Bad"}, {"name": "a" * 65}, {"name": "9x"}, {"value": "x"}, {"metric_type": "hist"}):
        answer = await request(nc, subjects.METRICS_CREATE, encode(raw | bad), MetricOut)
        assert isinstance(answer, ServiceError) and answer.status_code == 400, bad
    infinite = encode(raw | {"name": "other"}).replace(b'"value":0.75', b'"value":1e400')
    assert b"1e400" in infinite
    answer = await request(nc, subjects.METRICS_CREATE, infinite, MetricOut)
    assert isinstance(answer, ServiceError) and answer.status_code == 400
    for huge in (1.0000001e15, -3.5e276):  # finite, but a sum of two would not be
        answer = await request(nc, subjects.METRICS_CREATE, raw | {"name": "huge", "value": huge}, MetricOut)
        assert isinstance(answer, ServiceError) and answer.status_code == 400, huge

    await nc.jetstream().publish(subjects.RUN_DELETED, encode(ResourceDeleted(task_id=task, run_id=run)))
    await wait_total(nc, 0, run_id=run)
    gone = await request(nc, subjects.METRICS_CREATE, raw | {"name": "late"}, MetricOut)
    assert isinstance(gone, ServiceError) and gone.status_code == 404


async def test_redelivered_terminal_event_counts_the_run_once(service: MetricsService, nc: Client) -> None:
    task, agent, run = new_id(), f"r{new_id()[:8]}", new_id()
    stats = RunStats(duration=2, steps=1, agent=agent)
    event = Completion(
        id=new_id(),
        seq=4,
        timestamp=datetime(2030, 1, 1, tzinfo=UTC),
        task_id=task,
        run_id=run,
        data=CompletionData(results={}, duration=2, stats=stats),
    )
    await publish(nc, event)
    await publish(nc, event, msg_id=f"again-{new_id()}")
    await barrier(nc)
    got = await report(nc, agent=agent)
    assert (got.runs.total, got.runs.completed, got.metrics["duration"].count) == (1, 1, 1)


async def test_queries_are_a_micro_service(service: MetricsService, nc: Client) -> None:
    # Ask the copy started here by its id: other copies may answer the kind's subject too.
    pings = await nc.request("$SRV.PING.agentbus-metrics", b"", timeout=5)
    assert msgspec.json.decode(pings.data)["name"] == "agentbus-metrics"
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("$SRV.INFO.agentbus-metrics", b"", reply=inbox)
    mine = None
    while mine is None:
        info = msgspec.json.decode((await sub.next_msg(timeout=5)).data)
        if info["metadata"].get("instance") == service.settings.instance:
            mine = info
    await sub.unsubscribe()
    assert {e["subject"] for e in mine["endpoints"]} >= {
        subjects.METRICS_QUERY,
        subjects.METRICS_GET,
        subjects.METRICS_RUN_SUMMARY,
        subjects.METRICS_TASK_SUMMARY,
        subjects.METRICS_PING,
        subjects.METRICS_REPORT,
        subjects.METRICS_SERIES,
        subjects.METRICS_CREATE,
    }
    assert {e["queue_group"] for e in mine["endpoints"]} == {"metrics"}
    stats = await nc.request(f"$SRV.STATS.agentbus-metrics.{mine['id']}", b"", timeout=5)
    assert {e["name"] for e in msgspec.json.decode(stats.data)["endpoints"]} == {
        e["name"] for e in mine["endpoints"]
    }

    # An error carries both conventions: ours and micro's.
    msg = await nc.request(subjects.METRICS_SERIES, encode({"name": "Bad"}), timeout=5)
    headers = msg.headers or {}
    assert (headers.get("Agentbus-Error"), headers.get("Nats-Service-Error-Code")) == ("1", "400")
    assert msgspec.json.decode(msg.data, type=ServiceError).status_code == 400

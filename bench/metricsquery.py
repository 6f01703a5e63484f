"""The metrics service's queries over many rows, and its recording rate: `python -m bench.metricsquery`.

A fresh database (SQLite file, or a PostgreSQL database on the server of `--pg-admin`) is migrated
and filled straight through SQL with `--rows` raw metric rows (four names, ten agent kinds, a thousand
tasks, one row a second from 2025-01-01), in steps, so the cost's growth with rows shows; after each
step a metrics service (in this process, on a nats-server of its own) answers `--requests` of each
query over NATS: a summary of everything, one agent kind's, one task's, and an hourly series of one
name. p50 and p95 of their latency are printed per step, one JSON line each. Then `--events`
terminal events are published to JetStream and the rate at which their metrics are recorded is
measured (events/s from the first publish to the last row stored). The seeded rows are counted into
the sketches (sketches.py) before the queries, as the service's upkeep does while hours close; that
takes `aggregate_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import nats
from sqlalchemy import func, select, text

from agentbus.common.db import make_engine
from agentbus.contracts import Completion, RunStats, encode, subjects
from agentbus.contracts.events import CompletionData
from agentbus.contracts.messages import MetricsReportQuery, MetricsSeriesQuery, MetricsSummaryQuery
from agentbus.metrics.models import metrics
from agentbus.metrics.service import MetricsService, migrate_with_retry
from agentbus.metrics.settings import Settings
from agentbus.metrics.sketches import aggregate, register
from tests.support.servers import nats_server

NAMES = ("duration", "steps", "cost_usd", "time_to_plan")
SQLITE_SEED = """
WITH RECURSIVE c(x) AS (SELECT :start UNION ALL SELECT x + 1 FROM c WHERE x < :stop)
INSERT INTO metrics (id, task_id, run_id, name, metric_type, value, unit, labels, timestamp, agent, outcome)
SELECT printf('m%09d', x), printf('task%04d', x / 4 % 1000), printf('run%09d', x / 4),
    CASE x % 4 WHEN 0 THEN 'duration' WHEN 1 THEN 'steps' WHEN 2 THEN 'cost_usd' ELSE 'time_to_plan' END,
    'timer', (x * 7919 % 10007) / 100.0, 's', '{}',
    strftime('%Y-%m-%d %H:%M:%S', '2025-01-01', '+' || x || ' seconds') || '.000000',
    'kind' || (x / 4 % 10), CASE WHEN x % 40 < 36 THEN 'completed' ELSE 'failed' END
FROM c
"""
PG_SEED = """
INSERT INTO metrics (id, task_id, run_id, name, metric_type, value, unit, labels, timestamp, agent, outcome)
SELECT 'm' || lpad(x::text, 9, '0'), 'task' || lpad((x / 4 % 1000)::text, 4, '0'),
    'run' || lpad((x / 4)::text, 9, '0'),
    (ARRAY['duration', 'steps', 'cost_usd', 'time_to_plan'])[x % 4 + 1], 'timer',
    (x::bigint * 7919 % 10007) / 100.0, 's', '{}'::jsonb,
    timestamptz '2025-01-01 00:00:00+00' + x * interval '1 second', 'kind' || (x / 4 % 10),
    CASE WHEN x % 40 < 36 THEN 'completed' ELSE 'failed' END
FROM generate_series(CAST(:start AS bigint), CAST(:stop AS bigint)) AS x
"""


async def seed(engine, start: int, stop: int) -> None:  # type: ignore[no-untyped-def]
    sql = PG_SEED if engine.dialect.name == "postgresql" else SQLITE_SEED
    chunk = 200_000
    for lo in range(start, stop + 1, chunk):
        async with engine.begin() as conn:
            await conn.execute(text(sql), {"start": lo, "stop": min(stop, lo + chunk - 1)})
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE"))


async def timed(nc, subject: str, payload: bytes, n: int) -> dict:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        msg = await nc.request(subject, payload, timeout=120)
        times.append((time.perf_counter() - t0) * 1e3)
        assert not (msg.headers or {}).get("Agentbus-Error"), msg.data[:300]
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[max(0, -(-95 * n // 100) - 1)], 1),
    }


async def record_rate(nc, engine, events: int) -> dict:  # type: ignore[no-untyped-def]
    js = nc.jetstream()
    task = uuid.uuid4().hex
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    pending = []
    for _ in range(events):
        run = uuid.uuid4().hex
        ev = Completion(
            id=uuid.uuid4().hex,
            seq=2,
            timestamp=now,
            task_id=task,
            run_id=run,
            data=CompletionData(
                results={}, duration=1.0, stats=RunStats(duration=1.0, steps=1, agent="bench")
            ),
        )
        subject = subjects.run_event(task, run, "completion")
        pending.append(js.publish(subject, encode(ev), headers={"Nats-Msg-Id": f"{run}:2"}))
        if len(pending) >= 500:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    published = time.perf_counter() - t0
    while True:
        async with engine.connect() as conn:
            stored = (
                await conn.execute(select(func.count()).select_from(metrics).where(metrics.c.task_id == task))
            ).scalar_one()
        if stored >= 2 * events:
            break
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - t0
    return {"events": events, "publish_s": round(published, 2), "events_per_s": round(events / elapsed)}


async def main(a: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="agentbus-mq-") as d:
        url = a.database_url or f"sqlite+aiosqlite:///{Path(d) / 'metrics.db'}"
        engine = make_engine(url)
        register(engine)
        await migrate_with_retry(engine)
        with nats_server() as server:
            service = MetricsService(Settings(nats_url=server.url, database_url=url, instance="bench"))
            await service.start()
            nc = await nats.connect(server.url)
            summary: dict = {}
            try:
                seeded = 0
                for step in a.steps:
                    t0 = time.perf_counter()
                    await seed(engine, seeded, step - 1)
                    before, seeded = seeded, step
                    row = {"rows": step, "seed_s": round(time.perf_counter() - t0, 1)}
                    # What the service's upkeep would have done as the hours closed, in one go.
                    t0 = time.perf_counter()
                    await aggregate(engine)
                    async with engine.begin() as conn:
                        await conn.execute(text("ANALYZE"))
                    counted_s = time.perf_counter() - t0
                    row["aggregate_s"] = round(counted_s, 1)
                    summary[f"counted_rows_per_s @{step}"] = round((step - before) / counted_s)
                    queries = {
                        "summary": (subjects.METRICS_REPORT, MetricsReportQuery()),
                        "agent summary": (subjects.METRICS_REPORT, MetricsReportQuery(agent="kind3")),
                        "task summary": (
                            subjects.METRICS_TASK_SUMMARY,
                            MetricsSummaryQuery(task_id="task0007"),
                        ),
                        "series 1h": (
                            subjects.METRICS_SERIES,
                            MetricsSeriesQuery(name="duration", bucket="1h"),
                        ),
                    }
                    for label, (subject, query) in queries.items():
                        row[label] = await timed(nc, subject, encode(query), a.requests)
                        summary[f"p95_ms {label} @{step}"] = row[label]["p95_ms"]
                    print(json.dumps(row), flush=True)
                recording = await record_rate(nc, engine, a.events)
                print(json.dumps({"recording": recording}), flush=True)
                summary["events_per_s"] = recording["events_per_s"]
                print(json.dumps(summary), flush=True)  # the last line: what `python -m bench` reads
            finally:
                await nc.close()
                await service.stop()
        await engine.dispose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", default="", help="an empty database (default: a new SQLite file)")
    p.add_argument("--steps", default="10000,100000,1000000", help="row counts measured at, comma-separated")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--events", type=int, default=10_000)
    args = p.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    asyncio.run(main(args))

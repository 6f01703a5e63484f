"""All SQL of the metrics service: one small class over an AsyncEngine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentbus.common.db import read_then_write
from agentbus.contracts.messages import (
    MetricOut,
    MetricsPage,
    MetricsQuery,
    MetricsReport,
    MetricsReportQuery,
    MetricsSeries,
    MetricsSeriesQuery,
    MetricsSummary,
)
from agentbus.metrics.models import metric_rollups, metric_tombstones, metrics
from agentbus.metrics.queries import (
    BUCKET_SECONDS,
    outcomes,
    rollup_outcomes,
    rollup_points,
    rollup_window,
    series_points,
    summary_stats,
    with_rollups,
)

ResourceKind = Literal["task", "run"]

# Tombstones only have to outlive every redelivery of a deleted run's events,
# and the events stream keeps them for a week.
TOMBSTONE_TTL = timedelta(days=30)


def _insert(conn: AsyncConnection, table: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING needs the dialect's own insert()."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _to_out(row: Any) -> MetricOut:
    return MetricOut(
        id=row.id,
        task_id=row.task_id,
        run_id=row.run_id,
        name=row.name,
        metric_type=row.metric_type,
        value=row.value,
        unit=row.unit,
        labels=row.labels,
        timestamp=row.timestamp,
    )


class MetricsStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Reads, then writes (tombstones, then rows): on SQLite it takes the write lock up front, as a
        # deferred transaction that has read cannot wait for another writer (SQLITE_BUSY at once).
        self.writing = read_then_write(engine)

    async def insert(self, rows: list[dict[str, Any]]) -> None:
        """Record rows in one transaction, skipping a (run_id, name) already there and deleted tasks/runs."""
        if not rows:
            return
        async with self.writing.begin() as conn:
            ids = {r["task_id"] for r in rows} | {r["run_id"] for r in rows if r["run_id"]}
            tombstoned = select(metric_tombstones.c.resource_id).where(
                metric_tombstones.c.resource_id.in_(ids)
            )
            dead = set((await conn.execute(tombstoned)).scalars())
            rows = [r for r in rows if r["task_id"] not in dead and r["run_id"] not in dead]
            if rows:
                stmt = _insert(conn, metrics).on_conflict_do_nothing(index_elements=["run_id", "name"])
                await conn.execute(stmt, rows)

    async def delete_resource(self, kind: ResourceKind, resource_id: str) -> int:
        """Delete a task's or a run's metrics and leave a tombstone; returns how many went."""
        column = metrics.c.task_id if kind == "task" else metrics.c.run_id
        now = datetime.now(UTC)
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(metrics).where(column == resource_id))
            if kind == "task":
                await conn.execute(delete(metric_rollups).where(metric_rollups.c.task_id == resource_id))
            await conn.execute(
                _insert(conn, metric_tombstones)
                .values(resource_id=resource_id, kind=kind, deleted_at=now)
                .on_conflict_do_nothing(index_elements=["resource_id"])
            )
            await conn.execute(
                delete(metric_tombstones).where(metric_tombstones.c.deleted_at < now - TOMBSTONE_TTL)
            )
        return result.rowcount or 0

    async def page(self, q: MetricsQuery) -> MetricsPage:
        conds = []
        if q.task_id is not None:
            conds.append(metrics.c.task_id == q.task_id)
        if q.run_id is not None:
            conds.append(metrics.c.run_id == q.run_id)
        if q.name is not None:
            conds.append(metrics.c.name == q.name)
        if q.since is not None:
            conds.append(metrics.c.timestamp >= q.since)
        if q.until is not None:
            conds.append(metrics.c.timestamp <= q.until)
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(metrics).where(*conds))).scalar_one()
            result = await conn.execute(
                select(metrics)
                .where(*conds)
                .order_by(metrics.c.timestamp, metrics.c.id)
                .offset(q.skip)
                .limit(q.limit)
            )
            items = [_to_out(row) for row in result]
        return MetricsPage(items=items, total=total, skip=q.skip, limit=q.limit)

    async def get(self, metric_id: str) -> MetricOut | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(metrics).where(metrics.c.id == metric_id))).first()
        return None if row is None else _to_out(row)

    async def summary(self, kind: ResourceKind, resource_id: str) -> MetricsSummary:
        """Per-name count/min/max/avg/sum/last/p50/p95 in one SQL pass (queries.py)."""
        column = metrics.c.task_id if kind == "task" else metrics.c.run_id
        async with self.engine.connect() as conn:
            stats = await summary_stats(conn, [column == resource_id])
            if kind == "task":  # roll-ups keep no run ids: a run's summary is its raw rows'
                stats = await with_rollups(conn, stats, [metric_rollups.c.task_id == resource_id])
        return MetricsSummary(
            metric_count=sum(s.count for s in stats.values()),
            metrics=stats,
            task_id=resource_id if kind == "task" else None,
            run_id=resource_id if kind == "run" else None,
        )

    async def report(self, q: MetricsReportQuery) -> MetricsReport:
        """Every metric (or one agent kind's) in [since, until], with the runs' outcomes."""
        conds = _window(q.since, q.until)
        if q.agent is not None:
            conds.append(metrics.c.agent == q.agent)
        rolled = rollup_window(q.since, q.until)
        if q.agent is not None:
            rolled.append(metric_rollups.c.agent == q.agent)
        async with self.engine.connect() as conn:
            stats = await with_rollups(conn, await summary_stats(conn, conds), rolled)
            runs = await rollup_outcomes(conn, await outcomes(conn, conds), rolled)
        return MetricsReport(metric_count=sum(s.count for s in stats.values()), runs=runs, metrics=stats)

    async def series(self, q: MetricsSeriesQuery) -> MetricsSeries:
        conds = [metrics.c.name == q.name, *_window(q.since, q.until)]
        if q.task_id is not None:
            conds.append(metrics.c.task_id == q.task_id)
        if q.agent is not None:
            conds.append(metrics.c.agent == q.agent)
        r = metric_rollups.c
        rolled = [r.name == q.name, *rollup_window(q.since, q.until)]
        if q.task_id is not None:
            rolled.append(r.task_id == q.task_id)
        if q.agent is not None:
            rolled.append(r.agent == q.agent)
        seconds = BUCKET_SECONDS[q.bucket]
        async with self.engine.connect() as conn:
            points = await rollup_points(conn, await series_points(conn, conds, seconds), rolled, seconds)
        return MetricsSeries(name=q.name, bucket=q.bucket, points=points)

    async def create(self, row: dict[str, Any]) -> MetricOut | Literal["gone", "exists"]:
        """Record one metric; "exists" when its run already has one of that name, "gone" when the
        run or its task was deleted."""
        async with self.writing.begin() as conn:
            tombstoned = select(metric_tombstones.c.resource_id).where(
                metric_tombstones.c.resource_id.in_({row["task_id"], row["run_id"]})
            )
            if (await conn.execute(tombstoned)).first() is not None:
                return "gone"
            stmt = _insert(conn, metrics).on_conflict_do_nothing(index_elements=["run_id", "name"])
            result = await conn.execute(stmt.values(**row))
            if not result.rowcount:
                return "exists"
            stored = (await conn.execute(select(metrics).where(metrics.c.id == row["id"]))).one()
        return _to_out(stored)


def _window(since: datetime | None, until: datetime | None) -> list[Any]:
    conds = []
    if since is not None:
        conds.append(metrics.c.timestamp >= since)
    if until is not None:
        conds.append(metrics.c.timestamp <= until)
    return conds

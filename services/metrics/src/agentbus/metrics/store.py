"""All SQL of the metrics service: one small class over an AsyncEngine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentbus.contracts.messages import MetricOut, MetricsPage, MetricsQuery, MetricsSummary, SummaryStat
from agentbus.metrics.models import metric_tombstones, metrics

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

    async def insert(self, rows: list[dict[str, Any]]) -> None:
        """Record rows in one transaction, skipping a (run_id, name) already there and deleted tasks/runs."""
        if not rows:
            return
        async with self.engine.begin() as conn:
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
        """Per-name count/min/max/avg/last in one SQL pass; `last` is the value with the latest timestamp."""
        column = metrics.c.task_id if kind == "task" else metrics.c.run_id
        newest_first = func.row_number().over(
            partition_by=metrics.c.name, order_by=(metrics.c.timestamp.desc(), metrics.c.id.desc())
        )
        ranked = (
            select(metrics.c.name, metrics.c.value, newest_first.label("rank"))
            .where(column == resource_id)
            .subquery()
        )
        stmt = select(
            ranked.c.name,
            func.count(),
            func.min(ranked.c.value),
            func.max(ranked.c.value),
            func.avg(ranked.c.value),
            func.max(case((ranked.c.rank == 1, ranked.c.value))),
        ).group_by(ranked.c.name)
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt)
            stats = {
                name: SummaryStat(count=count, min=lo, max=hi, avg=float(avg), last=last)
                for name, count, lo, hi, avg, last in result
            }
        return MetricsSummary(
            metric_count=sum(s.count for s in stats.values()),
            metrics=stats,
            task_id=resource_id if kind == "task" else None,
            run_id=resource_id if kind == "run" else None,
        )

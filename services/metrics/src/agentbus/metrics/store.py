"""All SQL of the metrics service: one small class over an AsyncEngine."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentbus.common.db import read_then_write, sync_sqlite_engine
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
from agentbus.metrics import queries_fast
from agentbus.metrics.models import metric_rollups, metric_tombstones, metrics
from agentbus.metrics.queries import (
    BUCKET_SECONDS,
    outcomes,
    rollup_points,
    rollup_window,
    series_points,
    summary_stats,
    with_rollups,
)
from agentbus.metrics.queries_fast import Split
from agentbus.metrics.sketches import HOUR, forget

ResourceKind = Literal["task", "run"]

# Tombstones only have to outlive every redelivery of a deleted run's events,
# and the events stream keeps them for a week.
TOMBSTONE_TTL = timedelta(days=30)


def _insert(conn: AsyncConnection, table: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING needs the dialect's own insert()."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


# Built once: SQLAlchemy then finds their compiled form in its cache without building them again.
_TOMBSTONED = select(metric_tombstones.c.resource_id).where(
    metric_tombstones.c.resource_id.in_(bindparam("ids", expanding=True))
)
_RECORD = {
    name: dialect.insert(metrics).on_conflict_do_nothing(index_elements=["run_id", "name"])
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def _record(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Store rows (one executemany) but those of a deleted task or run, in the caller's transaction."""
    ids = {r["task_id"] for r in rows} | {r["run_id"] for r in rows if r["run_id"]}
    dead = set(conn.execute(_TOMBSTONED, {"ids": list(ids)}).scalars())
    if dead:
        rows = [r for r in rows if r["task_id"] not in dead and r["run_id"] not in dead]
    if rows:
        conn.execute(_RECORD["postgresql" if conn.dialect.name == "postgresql" else "sqlite"], rows)


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
    def __init__(self, engine: AsyncEngine, retention_days: float = 0) -> None:
        self.engine = engine
        self._retention_s = retention_days * 86400
        # Reads, then writes (tombstones, then rows): on SQLite it takes the write lock up front, as a
        # deferred transaction that has read cannot wait for another writer (SQLITE_BUSY at once).
        self.writing = read_then_write(engine)
        # On a SQLite file, `insert` runs its whole transaction in a thread of its own on a plain
        # sqlite3 connection (which begins IMMEDIATE): one hand-off per batch. Through aiosqlite each
        # statement, cursor, fetch, begin and commit was a hand-off of its own (a dozen per batch,
        # most of the service's CPU per run).
        self._sync = sync_sqlite_engine(engine.url)
        self._thread: ThreadPoolExecutor | None = None

    async def insert(self, rows: list[dict[str, Any]]) -> None:
        """Record rows in one transaction, skipping a (run_id, name) already there and deleted tasks/runs."""
        if not rows:
            return
        if self._sync is None:
            async with self.writing.begin() as conn:
                await conn.run_sync(_record, rows)
            return
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="metrics-insert")
        await asyncio.get_running_loop().run_in_executor(self._thread, self._insert_sync, rows)

    def _insert_sync(self, rows: list[dict[str, Any]]) -> None:
        assert self._sync is not None
        with self._sync.begin() as conn:
            _record(conn, rows)

    async def close(self) -> None:
        """Let an insert under way finish, then close the thread's connection (`insert` opens it again)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.shutdown)
        if self._sync is not None:
            self._sync.dispose()

    async def delete_resource(self, kind: ResourceKind, resource_id: str) -> int:
        """Delete a task's or a run's metrics and leave a tombstone; returns how many went."""
        column = metrics.c.task_id if kind == "task" else metrics.c.run_id
        now = datetime.now(UTC)
        async with self.writing.begin() as conn:
            await forget(conn, column, resource_id)
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

    def _split(self, since: datetime | None, until: datetime | None) -> Split:
        retained = None
        if self._retention_s > 0:
            retained = int((time.time() - self._retention_s) // HOUR * HOUR)
        return Split.of(since, until, retained)

    async def report(self, q: MetricsReportQuery) -> MetricsReport:
        """Every metric (or one agent kind's) in [since, until], with the runs' outcomes: from the
        sketches where the range has some (queries_fast.py), else exactly from the raw rows."""
        async with self.engine.connect() as conn:
            fast = await queries_fast.report(conn, q.agent, self._split(q.since, q.until))
            if fast is not None:
                stats, runs = fast
            else:
                conds = _window(q.since, q.until)
                if q.agent is not None:
                    conds.append(metrics.c.agent == q.agent)
                stats, runs = await summary_stats(conn, conds), await outcomes(conn, conds)
        return MetricsReport(metric_count=sum(s.count for s in stats.values()), runs=runs, metrics=stats)

    async def series(self, q: MetricsSeriesQuery) -> MetricsSeries:
        seconds = BUCKET_SECONDS[q.bucket]
        async with self.engine.connect() as conn:
            if q.task_id is None and seconds >= HOUR:
                split = self._split(q.since, q.until)
                points = await queries_fast.series(conn, q.name, q.agent, split, seconds)
                if points is not None:
                    return MetricsSeries(name=q.name, bucket=q.bucket, points=points)
            # A task's, or buckets under an hour: the raw rows, and the task's roll-ups past retention.
            conds = [metrics.c.name == q.name, *_window(q.since, q.until)]
            r = metric_rollups.c
            rolled = [r.name == q.name, *rollup_window(q.since, q.until)]
            if q.task_id is not None:
                conds.append(metrics.c.task_id == q.task_id)
                rolled.append(r.task_id == q.task_id)
            if q.agent is not None:
                conds.append(metrics.c.agent == q.agent)
                rolled.append(r.agent == q.agent)
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

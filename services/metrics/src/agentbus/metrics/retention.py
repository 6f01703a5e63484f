"""Retention: raw rows older than METRICS_RETENTION_DAYS become hourly roll-ups, then go.

One hour at a time, each in its own short transaction (its roll-up rows written, its raw rows
deleted), so queries are never held up: PostgreSQL readers never wait for writers, nor do SQLite's
in WAL mode. A row that arrives for an hour already rolled up (a late event) is merged into it on the
next round. Percentiles of a roll-up row are its hour's own (nearest rank); where roll-ups of several
hours, or roll-ups and raw rows, are combined, p50 and p95 are count-weighted means of the parts'
(an estimate, documented in the README). Only rows the sketches already count are rolled up and
deleted (sketches.py), so reports and series over old ranges answer from the sketches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.common.db import read_then_write
from agentbus.metrics.models import metric_rollups, metrics
from agentbus.metrics.queries import epoch_seconds
from agentbus.metrics.sketches import aggregate

log = logging.getLogger(__name__)

HOUR = 3600


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _merge(stmt: Any) -> Any:
    """ON CONFLICT: add this round's rows to the hour's roll-up already stored."""
    old, new = metric_rollups.c, stmt.excluded
    count = old["count"] + new["count"]

    def weighted(col: str) -> Any:
        return (old[col] * old["count"] + new[col] * new["count"]) / count

    return stmt.on_conflict_do_update(
        index_elements=["task_id", "agent", "name", "outcome", "hour"],
        set_={
            "count": count,
            "sum": old["sum"] + new["sum"],
            "min": case((new["min"] < old["min"], new["min"]), else_=old["min"]),
            "max": case((new["max"] > old["max"], new["max"]), else_=old["max"]),
            "p50": weighted("p50"),
            "p95": weighted("p95"),
            "last": case((new["last_at"] >= old["last_at"], new["last"]), else_=old["last"]),
            "last_at": case((new["last_at"] >= old["last_at"], new["last_at"]), else_=old["last_at"]),
        },
    )


def _counted(hour: int) -> list[Any]:
    """The hour's raw rows the sketches count (one not counted yet waits for the next round)."""
    m = metrics.c
    return [m.aggregated, m.timestamp >= _at(hour), m.timestamp < _at(hour + HOUR)]


async def roll_up_hour(engine: AsyncEngine, hour: int) -> int:
    """Roll up the raw rows of [hour, hour + 1h) and delete them; returns how many went."""
    agent, outcome = func.coalesce(metrics.c.agent, ""), func.coalesce(metrics.c.outcome, "")
    key = (metrics.c.task_id, agent, metrics.c.name, outcome)
    ranked = (
        select(
            metrics.c.task_id,
            agent.label("agent"),
            metrics.c.name,
            outcome.label("outcome"),
            metrics.c.value,
            epoch_seconds(engine.dialect.name).label("epoch"),
            func.row_number().over(partition_by=key, order_by=(metrics.c.value, metrics.c.id)).label("rank"),
            func.count().over(partition_by=key).label("n"),
            func.row_number()
            .over(partition_by=key, order_by=(metrics.c.timestamp.desc(), metrics.c.id.desc()))
            .label("newest"),
        )
        .where(*_counted(hour))
        .subquery()
    )
    r = ranked.c

    def at_rank(p: int) -> Any:
        return func.max(case((r.rank == (r.n * p + 99) // 100, r.value)))

    groups = select(
        r.task_id,
        r.agent,
        r.name,
        r.outcome,
        func.count(),
        func.sum(r.value),
        func.min(r.value),
        func.max(r.value),
        at_rank(50),
        at_rank(95),
        func.max(case((r.newest == 1, r.value))),
        func.max(r.epoch),
    ).group_by(r.task_id, r.agent, r.name, r.outcome)
    fields = (
        "task_id",
        "agent",
        "name",
        "outcome",
        "count",
        "sum",
        "min",
        "max",
        "p50",
        "p95",
        "last",
        "last_at",
    )
    async with read_then_write(engine).begin() as conn:  # SQLite: the write lock from the start
        rows = [{"hour": hour, **dict(zip(fields, row, strict=True))} for row in await conn.execute(groups)]
        if not rows:
            return 0
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        await conn.execute(_merge(dialect.insert(metric_rollups)), rows)
        gone = await conn.execute(delete(metrics).where(*_counted(hour)))
    return gone.rowcount or 0


async def roll_up(engine: AsyncEngine, retention_s: float, now: float | None = None) -> int:
    """Roll up every whole hour that ended more than `retention_s` ago, oldest first."""
    cutoff = int(((now or time.time()) - retention_s) // HOUR * HOUR)
    total = 0
    while True:
        async with engine.connect() as conn:
            oldest = (
                await conn.execute(
                    select(func.min(metrics.c.timestamp)).where(
                        metrics.c.aggregated, metrics.c.timestamp < _at(cutoff)
                    )
                )
            ).scalar_one()
        if oldest is None:
            return total
        hour = int(oldest.timestamp()) // HOUR * HOUR
        total += await roll_up_hour(engine, hour)
        await asyncio.sleep(0)  # let queries and recording in between hours


class Upkeep:
    """The schedule: a round at start and every `interval_s` counts the closed hours' new rows into
    the sketches (sketches.py), then, when a retention age is set, rolls up what is older."""

    def __init__(self, engine: AsyncEngine, retention_days: float, interval_s: float) -> None:
        self._engine, self._retention_s, self._interval_s = engine, retention_days * 86400, interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="metrics-upkeep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                counted = await aggregate(self._engine, wait=False)  # another copy is at it: its round
                if counted:
                    log.info("counted %d raw metrics of closed hours into the sketches", counted)
                if self._retention_s > 0:
                    count = await roll_up(self._engine, self._retention_s)
                    if count:
                        log.info("rolled up %d raw metrics older than the retention age", count)
            except Exception as exc:  # the database is away: the next round tries again
                log.warning("metrics upkeep failed, retrying in %ss: %s", self._interval_s, exc)
            await asyncio.sleep(self._interval_s)

"""The SQL of summaries, reports and series: aggregates and percentiles computed by the database.

Percentiles are nearest-rank, the same on SQLite and PostgreSQL: p is the value at rank
ceil(p/100 * n) of the n values in ascending order (ROW_NUMBER and COUNT over the group's window,
in integer arithmetic: ceil(50n/100) = (n + 1) // 2, ceil(95n/100) = (95n + 99) // 100).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, and_, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from agentbus.contracts.messages import RunOutcomes, SeriesPoint, SummaryStat
from agentbus.metrics.models import metric_rollups, metrics

BUCKET_SECONDS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}
OUTCOMES = ("completed", "failed", "rejected", "cancelled", "timeout")


def _rank_at(ranked: Any, p: int) -> Any:
    """The value whose ascending rank is ceil(p/100 * n), else null (aggregated with max)."""
    return case((ranked.c.rank == (ranked.c.n * p + 99) // 100, ranked.c.value))


def epoch_seconds(dialect: str, timestamp: Any = None) -> Any:
    """A row's time as epoch seconds (with the fraction), computed in SQL."""
    ts = metrics.c.timestamp if timestamp is None else timestamp
    if dialect == "postgresql":
        return func.extract("epoch", ts)
    return (func.julianday(ts) - 2440587.5) * 86400.0


def bucket_start(dialect: str, seconds: int, timestamp: Any = None) -> Any:
    """Epoch seconds of the bucket's start, as an integer, computed in SQL."""
    ts = metrics.c.timestamp if timestamp is None else timestamp
    if dialect == "postgresql":
        return cast(func.floor(func.extract("epoch", ts) / seconds), BigInteger) * seconds
    # SQLite keeps the UTC time as text; strftime('%s') reads it as epoch seconds.
    return (cast(func.strftime("%s", ts), Integer) // seconds) * seconds


async def summary_stats(conn: AsyncConnection, conds: list[Any]) -> dict[str, SummaryStat]:
    """Per name: count, min, max, avg, sum, last (the newest value), p50, p95, in one SQL pass."""
    by_name = metrics.c.name
    ranked = (
        select(
            metrics.c.name,
            metrics.c.value,
            func.row_number()
            .over(partition_by=by_name, order_by=(metrics.c.value, metrics.c.id))
            .label("rank"),
            func.count().over(partition_by=by_name).label("n"),
            func.row_number()
            .over(partition_by=by_name, order_by=(metrics.c.timestamp.desc(), metrics.c.id.desc()))
            .label("newest"),
        )
        .where(*conds)
        .subquery()
    )
    stmt = select(
        ranked.c.name,
        func.count(),
        func.min(ranked.c.value),
        func.max(ranked.c.value),
        func.avg(ranked.c.value),
        func.sum(ranked.c.value),
        func.max(case((ranked.c.newest == 1, ranked.c.value))),
        func.max(_rank_at(ranked, 50)),
        func.max(_rank_at(ranked, 95)),
    ).group_by(ranked.c.name)
    return {
        name: SummaryStat(
            count=count,
            min=lo,
            max=hi,
            avg=float(avg),
            last=last,
            sum=float(total),
            p50=float(p50),
            p95=float(p95),
        )
        for name, count, lo, hi, avg, total, last, p50, p95 in await conn.execute(stmt)
    }


async def outcomes(conn: AsyncConnection, conds: list[Any]) -> RunOutcomes:
    """Runs by terminal outcome: each run's terminal event recorded one `duration` row (unique per run)."""
    stmt = (
        select(metrics.c.outcome, func.count())
        .where(metrics.c.name == "duration", metrics.c.outcome.is_not(None), *conds)
        .group_by(metrics.c.outcome)
    )
    counts = {outcome: count for outcome, count in await conn.execute(stmt)}
    total = sum(counts.values())
    return RunOutcomes(
        total=total,
        **{o: counts.get(o, 0) for o in OUTCOMES},
        success_rate=None if total == 0 else counts.get("completed", 0) / total,
    )


async def series_points(conn: AsyncConnection, conds: list[Any], seconds: int) -> list[SeriesPoint]:
    """One point per non-empty bucket, in time order."""
    bucket = bucket_start(conn.dialect.name, seconds)
    ranked = (
        select(
            bucket.label("b"),
            metrics.c.value,
            func.row_number()
            .over(partition_by=bucket, order_by=(metrics.c.value, metrics.c.id))
            .label("rank"),
            func.count().over(partition_by=bucket).label("n"),
        )
        .where(and_(*conds))
        .subquery()
    )
    stmt = (
        select(
            ranked.c.b,
            func.count(),
            func.sum(ranked.c.value),
            func.min(ranked.c.value),
            func.max(ranked.c.value),
            func.avg(ranked.c.value),
            func.max(_rank_at(ranked, 95)),
        )
        .group_by(ranked.c.b)
        .order_by(ranked.c.b)
    )
    return [
        SeriesPoint(
            t=datetime.fromtimestamp(int(b), UTC),
            count=count,
            sum=float(total),
            min=lo,
            max=hi,
            avg=float(avg),
            p95=float(p95),
        )
        for b, count, total, lo, hi, avg, p95 in await conn.execute(stmt)
    ]


# --- roll-ups (retention.py): hours whose raw rows are gone ------------------------------------------


def rollup_window(since: datetime | None, until: datetime | None) -> list[Any]:
    """An hour counts when its start is in [since, until]."""
    conds = []
    if since is not None:
        conds.append(metric_rollups.c.hour >= math.ceil(since.timestamp() / 3600) * 3600)
    if until is not None:
        conds.append(metric_rollups.c.hour <= int(until.timestamp()))
    return conds


def _combine(
    raw: SummaryStat | None,
    count: int,
    total: float,
    lo: float,
    hi: float,
    p50w: float,
    p95w: float,
    last: float,
) -> SummaryStat:
    """Raw rows' stats and roll-ups' (p50w, p95w: sums of each hour's percentile times its count)."""
    if raw is None:
        return SummaryStat(
            count=count,
            min=lo,
            max=hi,
            avg=total / count,
            last=last,
            sum=total,
            p50=p50w / count,
            p95=p95w / count,
        )
    n = raw.count + count
    return SummaryStat(
        count=n,
        min=min(raw.min, lo),
        max=max(raw.max, hi),
        avg=(raw.sum + total) / n,
        last=raw.last,  # raw rows are the newer ones
        sum=raw.sum + total,
        p50=(raw.p50 * raw.count + p50w) / n,
        p95=(raw.p95 * raw.count + p95w) / n,
    )


async def with_rollups(
    conn: AsyncConnection, stats: dict[str, SummaryStat], conds: list[Any]
) -> dict[str, SummaryStat]:
    r = metric_rollups.c
    newest = func.row_number().over(partition_by=r.name, order_by=r.last_at.desc()).label("newest")
    ranked = (
        select(r.name, r["count"], r["sum"], r["min"], r["max"], r.p50, r.p95, r["last"], newest)
        .where(*conds)
        .subquery()
    )
    k = ranked.c
    stmt = select(
        k.name,
        func.sum(k["count"]),
        func.sum(k["sum"]),
        func.min(k["min"]),
        func.max(k["max"]),
        func.sum(k.p50 * k["count"]),
        func.sum(k.p95 * k["count"]),
        func.max(case((k.newest == 1, k["last"]))),
    ).group_by(k.name)
    out = dict(stats)
    for name, count, total, lo, hi, p50w, p95w, last in await conn.execute(stmt):
        out[name] = _combine(out.get(name), int(count), float(total), lo, hi, float(p50w), float(p95w), last)
    return out


async def rollup_points(
    conn: AsyncConnection, points: list[SeriesPoint], conds: list[Any], seconds: int
) -> list[SeriesPoint]:
    """The series' points with the roll-ups' hours added to the bucket each hour starts in."""
    r = metric_rollups.c
    bucket = (r.hour // seconds) * seconds
    stmt = (
        select(
            bucket.label("b"),
            func.sum(r["count"]),
            func.sum(r["sum"]),
            func.min(r["min"]),
            func.max(r["max"]),
            func.sum(r.p95 * r["count"]),
        )
        .where(*conds)
        .group_by(bucket)
    )
    merged = {int(p.t.timestamp()): p for p in points}
    for b, count, total, lo, hi, p95w in await conn.execute(stmt):
        count, total, p95w = int(count), float(total), float(p95w)
        raw = merged.get(int(b))
        if raw is not None:
            n = raw.count + count
            total, lo, hi, p95w = (
                raw.sum + total,
                min(raw.min, lo),
                max(raw.max, hi),
                raw.p95 * raw.count + p95w,
            )
            count = n
        merged[int(b)] = SeriesPoint(
            t=datetime.fromtimestamp(int(b), UTC),
            count=count,
            sum=total,
            min=lo,
            max=hi,
            avg=total / count,
            p95=p95w / count,
        )
    return [merged[b] for b in sorted(merged)]

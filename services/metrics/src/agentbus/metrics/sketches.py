"""Sketches: what summaries and series over many rows read instead of the raw rows.

Every closed hour's raw rows are aggregated, once, into a sketch per name for that hour ("h") and
for its UTC day ("d"), one for their agent kind and one for all kinds ("*"): exact count, sum, min,
max, newest value and runs by outcome, and a histogram of the values in logarithmic bins 1% wide
(`metric_bins`, the bins of DDSketch). A query then reads whole days and hours from the sketches and
only the rest (the ends of its range, the open hour, rows that arrived late) from the raw rows, so
its cost grows with the days and hours of its range, not with the rows (queries_fast.py).

p50 and p95 from the bins are the nearest-rank value's bin: within 1% of the exact value (relative),
clamped into [min, max]. Each raw row carries `aggregated`; a round aggregates the rows not yet
counted of one day's closed hours and marks them in the same transaction, so a late row is counted
in the next round and no row twice. Deleting a task or run drops the hourly sketches its rows are
counted in and sets those hours' rows back to not counted (the next round counts what remains);
past the retention age, where the raw rows are gone, its count, sum and outcomes are taken out of
the hourly sketches (its values stay in their bins). A day's sketches are then computed again from
its hours'. Each sketch also keeps its own p50 and p95, so that a series bucket that is one sketch
reads them instead of its bins.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, bindparam, case, cast, delete, event, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentbus.common.db import read_then_write
from agentbus.metrics.models import metric_bins, metric_rollups, metric_sketches, metrics
from agentbus.metrics.queries import OUTCOMES, bucket_start, epoch_seconds

HOUR, DAY = 3600, 86400
SPANS = {"h": HOUR, "d": DAY}
ALL = "*"  # the agent key of the sketches of every agent kind
ALPHA = 0.01  # relative accuracy of a bin's value
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LOG_GAMMA = math.log(GAMMA)
LOG_SCALE = math.log(2 / (GAMMA + 1))
# |log_gamma(v)| < 37,500 for every finite non-zero double: positive values' bins are above OFFSET,
# negative values' below -OFFSET (more negative for larger magnitudes), zero is bin 0. Bins sort as
# their values do.
OFFSET = 100_000
BIN_FUNCTION = "agentbus_bin"
LOCK = "agentbus-metrics-sketches"
BUSY = -1  # aggregate_once: another copy holds the lock


def bin_of(value: float) -> int:
    if value == 0:
        return 0
    i = math.ceil(math.log(abs(value)) / LOG_GAMMA)
    return OFFSET + i if value > 0 else -(OFFSET + i)


def value_of(b: int) -> float:
    """The value a bin stands for: within ALPHA of every value in it."""
    if b == 0:
        return 0.0
    try:  # 2 * GAMMA**i / (GAMMA + 1), without overflowing on the way for the largest doubles
        magnitude = math.exp((abs(b) - OFFSET) * LOG_GAMMA + LOG_SCALE)
    except OverflowError:
        magnitude = sys.float_info.max
    return magnitude if b > 0 else -magnitude


def percentile(bins: dict[int, int], p: int, lo: float, hi: float) -> float:
    """The nearest-rank p-th percentile of the values the bins count, clamped into [lo, hi]."""
    n = sum(bins.values())
    rank, seen = (p * n + 99) // 100, 0
    for b in sorted(bins):
        seen += bins[b]
        if seen >= rank:
            return min(hi, max(lo, value_of(b)))
    return hi


def register(engine: AsyncEngine) -> None:
    """SQLite has no logarithm everywhere: bin_of as a function of each new connection."""
    if engine.dialect.name != "sqlite":
        return

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function(BIN_FUNCTION, 1, bin_of, deterministic=True)

    event.listen(engine.sync_engine, "connect", on_connect)


def bin_sql(dialect: str, value: Any) -> Any:
    if dialect != "postgresql":
        return getattr(func, BIN_FUNCTION)(value)
    i = func.ceil(func.ln(func.abs(value)) / LOG_GAMMA)
    return cast(case((value == 0, 0), (value > 0, OFFSET + i), else_=-(OFFSET + i)), Integer)


def _insert(dialect: str, table: Any) -> Any:
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


def _add_sketches(stmt: Any) -> Any:
    old, new = metric_sketches.c, stmt.excluded
    newer = new["last_at"] >= old["last_at"]
    return stmt.on_conflict_do_update(
        index_elements=["agent", "span", "start", "name"],
        set_={
            "count": old["count"] + new["count"],
            "sum": old["sum"] + new["sum"],
            "min": case((new["min"] < old["min"], new["min"]), else_=old["min"]),
            "max": case((new["max"] > old["max"], new["max"]), else_=old["max"]),
            "last": case((newer, new["last"]), else_=old["last"]),
            "last_at": case((newer, new["last_at"]), else_=old["last_at"]),
            **{o: old[o] + new[o] for o in OUTCOMES},
        },
    )


def _add_bins(stmt: Any) -> Any:
    return stmt.on_conflict_do_update(
        index_elements=["agent", "span", "start", "name", "bin"],
        set_={"count": metric_bins.c["count"] + stmt.excluded["count"]},
    )


def _statements(dialect: str, window: list[Any]) -> list[Any]:
    """INSERT ... SELECT of the sketches and bins of the rows in `window` (4 each: per agent kind
    and for all, per hour and per day)."""
    m = metrics.c
    out = []
    for agent in (func.coalesce(m.agent, ""), literal(ALL)):
        for span, seconds in SPANS.items():
            start = bucket_start(dialect, seconds)
            key = (agent, start, m.name)
            ranked = (
                select(
                    agent.label("agent"),
                    start.label("start"),
                    m.name,
                    m.value,
                    m.outcome,
                    epoch_seconds(dialect).label("at"),
                    func.row_number()
                    .over(partition_by=key, order_by=(m.timestamp.desc(), m.id.desc()))
                    .label("newest"),
                )
                .where(*window)
                .subquery()
            )
            r = ranked.c
            sketches = select(
                r.agent,
                literal(span),
                r.start,
                r.name,
                func.count(),
                func.sum(r.value),
                func.min(r.value),
                func.max(r.value),
                func.max(case((r.newest == 1, r.value))),
                func.max(r.at),
                *(func.sum(case((r.outcome == o, 1), else_=0)) for o in OUTCOMES),
            ).group_by(r.agent, r.start, r.name)
            columns = ["agent", "span", "start", "name", "count", "sum", "min", "max", "last", "last_at"]
            out.append(
                _add_sketches(_insert(dialect, metric_sketches).from_select([*columns, *OUTCOMES], sketches))
            )
            b = bin_sql(dialect, m.value)
            bins = (
                select(agent, literal(span), start, m.name, b, func.count()).where(*window).group_by(*key, b)
            )
            out.append(
                _add_bins(
                    _insert(dialect, metric_bins).from_select(
                        ["agent", "span", "start", "name", "bin", "count"], bins
                    )
                )
            )
    return out


async def _lock(conn: AsyncConnection, wait: bool) -> bool:
    """One writer of the sketches at a time on PostgreSQL (SQLite's write lock already is one)."""
    if conn.dialect.name != "postgresql":
        return True
    fn = func.pg_advisory_xact_lock if wait else func.pg_try_advisory_xact_lock
    got = (await conn.execute(select(fn(func.hashtext(LOCK))))).scalar()
    return True if wait else bool(got)


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


async def aggregate_once(engine: AsyncEngine, now: float | None = None) -> int | None:
    """Aggregate the not yet counted rows of the oldest day that has some in a closed hour; returns
    how many (0 if another copy counted them meanwhile), BUSY while another copy is at it, None
    when nothing is left."""
    closed = int((now or time.time()) // HOUR * HOUR)
    m = metrics.c
    async with engine.connect() as conn:
        # Not min(): SQLite would walk the whole timestamp index to the first row not counted.
        first = select(m.timestamp).where(~m.aggregated).order_by(m.timestamp).limit(1)
        oldest = (await conn.execute(first)).scalar()
    if oldest is None or oldest >= _at(closed):
        return None
    day = int(oldest.timestamp()) // DAY * DAY
    window = [~m.aggregated, m.timestamp >= _at(day), m.timestamp < _at(min(day + DAY, closed))]
    writing = read_then_write(engine)
    if engine.dialect.name == "postgresql":  # a row inserted meanwhile must be neither counted nor marked
        writing = writing.execution_options(isolation_level="REPEATABLE READ")
    async with writing.begin() as conn:
        if not await _lock(conn, wait=False):
            return BUSY
        for stmt in _statements(conn.dialect.name, window):
            await conn.execute(stmt)
        await refresh_percentiles(conn, day, day + DAY)
        done = await conn.execute(update(metrics).where(*window).values(aggregated=True))
    return done.rowcount or 0


async def aggregate(engine: AsyncEngine, now: float | None = None, wait: bool = True) -> int:
    """Aggregate every closed hour's rows not yet counted; returns how many. While another copy is
    at it: wait for it (`wait`), or leave the rest to it."""
    total = 0
    while (count := await aggregate_once(engine, now)) is not None:
        if count != BUSY:
            total += count
        elif wait:
            await asyncio.sleep(0.1)
        else:
            break
    return total


async def forget(conn: AsyncConnection, column: Any, resource_id: str) -> None:
    """Before a task's or run's raw rows are deleted (in that transaction): drop the hourly sketches
    they are counted in and set those hours' rows back to not counted (the next round counts what
    remains); take its roll-ups (hours past the retention age) out of the hourly sketches' counts,
    sums and outcomes; then rebuild the touched days' sketches from their hours'."""
    await _lock(conn, wait=True)
    m, s = metrics.c, metric_sketches.c
    hour = bucket_start(conn.dialect.name, HOUR)
    counted = select(hour).where(column == resource_id, m.aggregated).distinct()
    hours = {int(h) for h in (await conn.execute(counted)).scalars()}
    for h in hours:
        for table in (metric_sketches, metric_bins):
            await conn.execute(delete(table).where(table.c.span == "h", table.c.start == h))
        in_hour = (m.aggregated, m.timestamp >= _at(h), m.timestamp < _at(h + HOUR))
        await conn.execute(update(metrics).where(*in_hour).values(aggregated=False))
    if column is m.task_id:
        r = metric_rollups.c
        rollups = await conn.execute(
            select(r.agent, r.name, r.outcome, r.hour, r["count"], r["sum"]).where(r.task_id == resource_id)
        )
        for agent, name, outcome, h, count, total in rollups.all():
            hours.add(int(h))
            values: dict[str, Any] = {"count": s["count"] - count, "sum": s["sum"] - total}
            if outcome in OUTCOMES:
                values[outcome] = s[outcome] - count
            await conn.execute(
                update(metric_sketches)
                .where(s.agent.in_((agent, ALL)), s.span == "h", s.start == int(h), s.name == name)
                .values(**values)
            )
    for day in sorted({h // DAY * DAY for h in hours}):
        await _rebuild_day(conn, day)


async def _rebuild_day(conn: AsyncConnection, day: int) -> None:
    """A day's sketches and bins are the sum of its hours': computed again from them."""
    s, b = metric_sketches.c, metric_bins.c
    hours = (s.span == "h", s.start >= day, s.start < day + DAY, s["count"] > 0)
    rows = (await conn.execute(select(metric_sketches).where(*hours))).all()
    sums: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row.agent, row.name)
        got = sums.get(key)
        if got is None:
            sums[key] = {**row._asdict(), "span": "d", "start": day}
            continue
        got["count"] += row.count
        got["sum"] += row.sum
        got["min"], got["max"] = min(got["min"], row.min), max(got["max"], row.max)
        if row.last_at >= got["last_at"]:
            got["last"], got["last_at"] = row.last, row.last_at
        for o in OUTCOMES:
            got[o] += getattr(row, o)
    emptied = select(s.agent, s.start, s.name).where(s.span == "h", s.start >= day, s.start < day + DAY)
    for agent, start, name in (await conn.execute(emptied.where(s["count"] <= 0))).all():
        for table in (metric_sketches, metric_bins):
            t = table.c
            await conn.execute(
                delete(table).where(t.agent == agent, t.span == "h", t.start == start, t.name == name)
            )
    for table in (metric_sketches, metric_bins):
        await conn.execute(delete(table).where(table.c.span == "d", table.c.start == day))
    if sums:
        await conn.execute(metric_sketches.insert(), list(sums.values()))
    bins = (
        select(b.agent, literal("d"), literal(day), b.name, b.bin, func.sum(b["count"]))
        .where(b.span == "h", b.start >= day, b.start < day + DAY)
        .group_by(b.agent, b.name, b.bin)
    )
    columns = ["agent", "span", "start", "name", "bin", "count"]
    await conn.execute(metric_bins.insert().from_select(columns, bins))
    await refresh_percentiles(conn, day, day + DAY)


async def refresh_percentiles(conn: AsyncConnection, lo: int, hi: int) -> None:
    """Each sketch's own p50 and p95 (of those starting in [lo, hi)), computed from its bins."""
    s, b = metric_sketches.c, metric_bins.c
    ranges = await conn.execute(
        select(s.agent, s.span, s.start, s.name, s["min"], s["max"]).where(s.start >= lo, s.start < hi)
    )
    bounds = {(a, sp, int(st), n): (mn, mx) for a, sp, st, n, mn, mx in ranges}
    bins: dict[tuple[str, str, int, str], dict[int, int]] = {}
    rows = await conn.execute(
        select(b.agent, b.span, b.start, b.name, b.bin, b["count"]).where(b.start >= lo, b.start < hi)
    )
    for agent, span, start, name, bin_, count in rows:
        bins.setdefault((agent, span, int(start), name), {})[int(bin_)] = int(count)
    updates = []
    for key, (mn, mx) in bounds.items():
        got = bins.get(key)
        if got:
            updates.append(
                dict(zip(("k_agent", "k_span", "k_start", "k_name"), key, strict=True))
                | {"v50": percentile(got, 50, mn, mx), "v95": percentile(got, 95, mn, mx)}
            )
    if updates:
        where = (
            (s.agent == bindparam("k_agent"))
            & (s.span == bindparam("k_span"))
            & (s.start == bindparam("k_start"))
            & (s.name == bindparam("k_name"))
        )
        stmt = update(metric_sketches).where(where).values(p50=bindparam("v50"), p95=bindparam("v95"))
        await conn.execute(stmt, updates)

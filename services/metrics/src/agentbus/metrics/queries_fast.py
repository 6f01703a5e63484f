"""Summaries and series over the sketches (sketches.py): whole days and hours from them, the rest
of the range from the raw rows.

A range [since, until] splits into the hours wholly inside it (from `a`, the first hour starting at
or after `since`, to `u`, the first hour not wholly inside), read from sketches (the days among them
from daily sketches), and the rest, read raw: rows before `a`, from `u` on, and rows not counted yet
(the open hour, late rows). Past the retention age raw rows are gone, so there an hour counts when
it starts in the range, as the roll-ups do. With no sketch in the range, None: the caller answers
exactly from the raw rows (queries.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from agentbus.contracts.messages import RunOutcomes, SeriesPoint, SummaryStat
from agentbus.metrics.models import metric_bins, metric_sketches, metrics
from agentbus.metrics.queries import OUTCOMES, bucket_start, epoch_seconds
from agentbus.metrics.sketches import ALL, DAY, HOUR, bin_sql, percentile, value_of

Bins = dict[int, int]


@dataclass(frozen=True)
class Split:
    a: int | None  # None: from the beginning
    u: int | None  # None: to the end
    since: datetime | None
    until: datetime | None

    @classmethod
    def of(cls, since: datetime | None, until: datetime | None, retained_from: int | None) -> Split:
        """`retained_from`: the start of the oldest hour whose raw rows are kept (None: all are)."""
        a = None if since is None else math.ceil(since.timestamp() / HOUR) * HOUR
        u = None
        if until is not None:
            e = int(until.timestamp() // HOUR * HOUR)
            u = e if retained_from is None else max(e, min(e + HOUR, retained_from))
        return cls(a, u, since, until)

    def raw(self, conds: list[Any]) -> Any:
        """The rows (matching `conds`) read raw: before `a`, from `u` on, and the ones in between not
        counted yet, as a UNION ALL so each part reads through an index."""
        m, t = metrics.c, metrics.c.timestamp
        window = [] if self.since is None else [t >= self.since]
        if self.until is not None:
            window.append(t <= self.until)
        parts = [
            [
                ~m.aggregated,
                *([] if self.a is None else [t >= _at(self.a)]),
                *([] if self.u is None else [t < _at(self.u)]),
            ]
        ]
        if self.a is not None:
            parts.append([t < _at(self.a)])
        if self.u is not None:
            parts.append([t >= _at(self.u)])
        columns = (m.id, m.name, m.value, m.outcome, m.timestamp)
        return union_all(*(select(*columns).where(*conds, *window, *part) for part in parts)).subquery("raw")

    def spans(self, table: Any, days: bool) -> Any:
        """The sketch rows of [a, u): whole days from daily sketches (if `days`), the rest hourly."""
        c = table.c
        if not days:
            return and_(c.span == "h", *_between(c.start, self.a, self.u))
        d0 = None if self.a is None else -(-self.a // DAY) * DAY
        d1 = None if self.u is None else self.u // DAY * DAY
        if d0 is not None and d1 is not None and d0 >= d1:
            return and_(c.span == "h", *_between(c.start, self.a, self.u))
        parts = [and_(c.span == "d", *_between(c.start, d0, d1))]
        if d0 is not None:  # the hours before the first whole day
            parts.append(and_(c.span == "h", *_between(c.start, self.a, d0)))
        if d1 is not None:  # and after the last
            parts.append(and_(c.span == "h", *_between(c.start, d1, self.u)))
        return or_(*parts)


def _between(col: Any, lo: int | None, hi: int | None) -> list[Any]:
    return ([] if lo is None else [col >= lo]) + ([] if hi is None else [col < hi])


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _agent_conds(agent: str | None) -> tuple[list[Any], str]:
    return ([] if agent is None else [metrics.c.agent == agent]), (ALL if agent is None else agent)


async def _raw_parts(conn: AsyncConnection, raw: Any) -> dict[str, list[Any]]:
    """Per name: [count, sum, min, max, last, last_at] of the raw rows."""
    w = raw.c
    ranked = select(
        w.name,
        w.value,
        epoch_seconds(conn.dialect.name, w.timestamp).label("at"),
        func.row_number()
        .over(partition_by=w.name, order_by=(w.timestamp.desc(), w.id.desc()))
        .label("newest"),
    ).subquery()
    r = ranked.c
    stmt = select(
        r.name,
        func.count(),
        func.sum(r.value),
        func.min(r.value),
        func.max(r.value),
        func.max(case((r.newest == 1, r.value))),
        func.max(r.at),
    ).group_by(r.name)
    rows = await conn.execute(stmt)
    return {
        name: [int(n), float(total), lo, hi, last, float(at)] for name, n, total, lo, hi, last, at in rows
    }


def _merge_parts(
    parts: dict[str, list[Any]], name: str, n: int, total: float, lo: float, hi: float, last: float, at: float
) -> None:
    got = parts.get(name)
    if got is None:
        parts[name] = [n, total, lo, hi, last, at]
        return
    got[0] += n
    got[1] += total
    got[2], got[3] = min(got[2], lo), max(got[3], hi)
    if at >= got[5]:
        got[4], got[5] = last, at


async def report(
    conn: AsyncConnection, agent: str | None, split: Split
) -> tuple[dict[str, SummaryStat], RunOutcomes] | None:
    """Every metric of one agent kind (or all) in the range, with the runs' outcomes."""
    s, b = metric_sketches.c, metric_bins.c
    raw_agent, key = _agent_conds(agent)
    newest = func.row_number().over(partition_by=s.name, order_by=s.last_at.desc()).label("newest")
    ranked = (
        select(
            s.name,
            s["count"],
            s["sum"],
            s["min"],
            s["max"],
            s["last"],
            s.last_at,
            *(s[o] for o in OUTCOMES),
            newest,
        )
        .where(s.agent == key, split.spans(metric_sketches, days=True), s["count"] > 0)
        .subquery()
    )
    k = ranked.c
    sketched = (
        await conn.execute(
            select(
                k.name,
                func.sum(k["count"]),
                func.sum(k["sum"]),
                func.min(k["min"]),
                func.max(k["max"]),
                func.max(case((k.newest == 1, k["last"]))),
                func.max(k.last_at),
                *(func.sum(k[o]) for o in OUTCOMES),
            ).group_by(k.name)
        )
    ).all()
    if not sketched:
        return None
    raw = split.raw(raw_agent)
    parts = await _raw_parts(conn, raw)
    counts = dict.fromkeys(OUTCOMES, 0)
    by_outcome_raw = (
        select(raw.c.outcome, func.count()).where(raw.c.name == "duration").group_by(raw.c.outcome)
    )
    for outcome, n in await conn.execute(by_outcome_raw):
        if outcome in counts:
            counts[outcome] += int(n)
    for name, n, total, lo, hi, last, at, *by_outcome in sketched:
        _merge_parts(parts, name, int(n), float(total), lo, hi, last, float(at))
        if name == "duration":
            for o, c in zip(OUTCOMES, by_outcome, strict=True):
                counts[o] += int(c)
    bins: dict[str, Bins] = {}
    sketch_bins = (
        select(b.name, b.bin, func.sum(b["count"]))
        .where(b.agent == key, split.spans(metric_bins, days=True))
        .group_by(b.name, b.bin)
    )
    value_bin = bin_sql(conn.dialect.name, raw.c.value)
    raw_bins = select(raw.c.name, value_bin, func.count()).group_by(raw.c.name, value_bin)
    for stmt in (sketch_bins, raw_bins):
        for name, bin_, count in await conn.execute(stmt):
            named = bins.setdefault(name, {})
            named[int(bin_)] = named.get(int(bin_), 0) + int(count)
    stats = {}
    for name, (n, total, lo, hi, last, _) in parts.items():
        if n <= 0:
            continue
        named = bins.get(name, {})
        stats[name] = SummaryStat(
            count=n,
            min=lo,
            max=hi,
            avg=total / n,
            last=last,
            sum=total,
            p50=percentile(named, 50, lo, hi),
            p95=percentile(named, 95, lo, hi),
        )
    total_runs = sum(counts.values())
    return stats, RunOutcomes(
        total=total_runs, **counts, success_rate=None if total_runs == 0 else counts["completed"] / total_runs
    )


async def series(
    conn: AsyncConnection, name: str, agent: str | None, split: Split, seconds: int
) -> list[SeriesPoint] | None:
    """Points of 1h or 1d buckets: sketches of the hours (or days) inside, raw rows for the rest."""
    s, b = metric_sketches.c, metric_bins.c
    raw_agent, key = _agent_conds(agent)
    days = seconds >= DAY
    sketched = (
        await conn.execute(
            select(s.start, s.span, s["count"], s["sum"], s["min"], s["max"], s.p95).where(
                s.agent == key, s.name == name, split.spans(metric_sketches, days), s["count"] > 0
            )
        )
    ).all()
    if not sketched:
        return None
    points: dict[int, list[Any]] = {}  # bucket: [count, sum, min, max]

    def add(bucket: int, n: int, total: float, lo: float, hi: float) -> None:
        got = points.get(bucket)
        if got is None:
            points[bucket] = [n, total, lo, hi]
        else:
            got[0] += n
            got[1] += total
            got[2], got[3] = min(got[2], lo), max(got[3], hi)

    span = "d" if days else "h"
    # A bucket that is one sketch has its p95 stored with it; the others (several sketches, or
    # sketches and raw rows) add their bins up.
    p95 = {int(start): v95 for start, of, *_, v95 in sketched if of == span}
    mixed = {int(start) // seconds * seconds for start, of, *_ in sketched if of != span}
    for start, _, n, total, lo, hi, _ in sketched:
        add(int(start) // seconds * seconds, int(n), float(total), lo, hi)
    m = metrics.c
    raw = split.raw([m.name == name, *raw_agent])
    w = raw.c
    bucket = bucket_start(conn.dialect.name, seconds, w.timestamp)
    value_bin = bin_sql(conn.dialect.name, w.value)
    raw_points = select(
        bucket, func.count(), func.sum(w.value), func.min(w.value), func.max(w.value)
    ).group_by(bucket)
    for start, n, total, lo, hi in await conn.execute(raw_points):
        add(int(start), int(n), float(total), lo, hi)
        mixed.add(int(start))
    mixed |= {t for t, v in p95.items() if v is None}
    if mixed:  # each mixed bucket's p95 bin, picked in SQL: the first whose running count reaches the rank
        sketch_t = b.start // seconds * seconds
        parts = union_all(
            select(sketch_t.label("t"), b.bin.label("bin"), b["count"].label("n")).where(
                b.agent == key,
                b.name == name,
                split.spans(metric_bins, days),
                b.start >= min(mixed),
                b.start < max(mixed) + seconds,
                sketch_t.in_(mixed),
            ),
            select(bucket.label("t"), value_bin.label("bin"), func.count().label("n")).group_by(
                bucket, value_bin
            ),
        ).subquery()
        added = (
            select(parts.c.t, parts.c.bin, func.sum(parts.c.n).label("n"))
            .group_by(parts.c.t, parts.c.bin)
            .subquery()
        )
        g = added.c
        running = select(
            g.t,
            g.bin,
            g.n,
            func.sum(g.n).over(partition_by=g.t, order_by=g.bin).label("cum"),
            func.sum(g.n).over(partition_by=g.t).label("total"),
        ).subquery()
        r = running.c
        pick = select(r.t, r.bin).where(r.cum * 100 >= r.total * 95, (r.cum - r.n) * 100 < r.total * 95)
        p95.update({int(t): value_of(int(bin_)) for t, bin_ in await conn.execute(pick)})
    return [
        SeriesPoint(
            t=datetime.fromtimestamp(t, UTC),
            count=n,
            sum=total,
            min=lo,
            max=hi,
            avg=total / n,
            p95=min(hi, max(lo, p95[t])),
        )
        for t, (n, total, lo, hi) in sorted(points.items())
        if n > 0
    ]

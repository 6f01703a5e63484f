"""Lists, pages and logs as fast reads (`reads.Query`: the driver's own SQL on the reader's
connections), flat however many rows are stored.

- A page is newest first (`created_at`, then `id`, both descending). `skip` keeps working; a
  cursor names the last row of the page before, so the next page starts right after it through
  the index, at the same cost at any depth.
- A page's `total` is exact and read from `row_counts` (kept by triggers in the same transaction
  as every insert, delete and status change, migration 0003; on PostgreSQL plus the deltas not
  folded in yet) instead of counting the rows, by a subquery of the page's own statement.
- A run's log is an index range of its events (`run_id`, `seq`): its size is the run's, not the
  table's.
- A page's size is written into its statement (`LIMIT 11`), not a parameter, and an offset of 0
  is left out (a `skip` above 0 is a parameter). PostgreSQL plans a prepared statement for its
  parameters' values each time until a plan for any value looks as cheap, and a plan for an
  unknown `LIMIT $n` assumes a tenth of the table: a page was planned again on every request, and
  the planning cost more than the page (a million tasks stored: 223-257 us of server CPU per page
  against 120-127 with the size written in). With it written in, PostgreSQL keeps one plan per
  statement once its own costing finds it as cheap as a fresh one. A statement per size (a page's
  `limit` is at most 100, a log's at most 1000), prepared once per connection and kept while it
  is among the connection's most used.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import msgspec
from sqlalchemy import Column, Integer, Table, Text

from agentbus.gateway.store.reads import Query, numbered
from agentbus.gateway.store.tables import row_counts, run_events


class BadCursor(ValueError):
    """A cursor this gateway did not hand out (or one that was changed)."""


class Position(NamedTuple):
    """Where a page ends: its last row's sort key."""

    created_at: datetime
    id: str


_position = msgspec.json.Decoder(tuple[datetime, str])


def encode_cursor(row: Any) -> str:
    raw = msgspec.json.encode((row.created_at, row.id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, key = _position.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise BadCursor("cursor is not one this gateway handed out (use a page's next_cursor)") from None
    if created_at.tzinfo is None:
        raise BadCursor("cursor is not one this gateway handed out (use a page's next_cursor)")
    return Position(created_at, key)


class Page(NamedTuple):
    rows: list[Any]
    total: int
    next_cursor: str | None


COUNT = Query(
    "row_count",
    'SELECT coalesce(sum("n"), 0) AS n FROM "row_counts" WHERE "name" = ?',
    [Column("n", Integer)],
    [row_counts.c.name],
    # PostgreSQL: plus the deltas not folded into row_counts yet (migration 0003).
    pg_sql="SELECT coalesce((SELECT sum(n) FROM row_counts WHERE name = $1), 0)"
    " + coalesce((SELECT sum(n) FROM row_count_deltas WHERE name = $1), 0) AS n",
)


class Lists:
    """The prepared list queries of one table, one per combination of filters and cursor.

    A page reads only the `shown` columns (those its REST objects show), and the JSON columns among
    them that the answer carries as they are (`raw`) as their JSON text, never parsed: most of a
    page's cost was in its rows' values, not in finding them."""

    def __init__(self, table: Table, shown: Sequence[str], raw: Sequence[str] = ()) -> None:
        self.table = table
        self.columns = [table.c[name] for name in shown]
        self.raw = tuple(raw)
        self._queries: dict[tuple[tuple[str, ...], bool, int, bool], Query] = {}

    def query(self, filters: tuple[str, ...], after: bool, rows: int, skips: bool) -> Query:
        """The statement of pages of at most `rows` rows, with these filters, after a cursor or
        not; its last parameter is the offset when it `skips`."""
        key = (filters, after, rows, skips)
        found = self._queries.get(key)
        if found is None:
            found = self._queries[key] = self._build(*key)
        return found

    def _build(self, filters: tuple[str, ...], after: bool, rows: int, skips: bool) -> Query:
        """The page's rows, each carrying the list's total (`total`; the first parameter is its
        `row_counts` name): one statement, one round trip on PostgreSQL, and the rows and their
        total from one snapshot. An empty page has no row to carry it: `COUNT` reads it alone."""
        t = self.table
        where = [f'"{name}" = ?' for name in filters]
        binds: list[Any] = [row_counts.c.name, *(t.c[name] for name in filters)]
        if after:
            # The first conjunct is an index range; the second settles rows of the same instant.
            where.append('"created_at" <= ? AND ("created_at" < ? OR "id" < ?)')
            binds += [t.c.created_at, t.c.created_at, t.c.id]
        rest = (
            f' FROM "{t.name}"'
            + (" WHERE " + " AND ".join(where) if where else "")
            + f' ORDER BY "created_at" DESC, "id" DESC LIMIT {int(rows)}'
            + (" OFFSET ?" if skips else "")
        )
        names = ", ".join(f'"{c.name}"' for c in self.columns)
        pg_names = ", ".join(
            f'"{c.name}"::text AS "{c.name}"' if c.name in self.raw else f'"{c.name}"' for c in self.columns
        )
        key = "_".join(filters) or "all"
        return Query(
            f"{t.name}_{key}{'_after' if after else ''}_{int(rows)}{'_skip' if skips else ''}",
            f"SELECT {names}, ({COUNT.sql}) AS total{rest}",
            [*self.columns, Column("total", Integer)],
            [*binds, *([None] if skips else [])],
            # The count names its one parameter twice ($1); the page's own start at $2.
            pg_sql=f"SELECT {pg_names}, ({COUNT.pg_sql}) AS total{numbered(rest, 2)}",
            raw=self.raw,
        )


def count_name(table: str, filters: dict[str, str]) -> str:
    """The `row_counts` name of a filtered table: `runs`, `runs|task=T`, `runs|task=T|status=S`."""
    return "|".join([table, *(f"{k}={v}" for k, v in filters.items())])


# PostgreSQL: fold the appended deltas into row_counts, atomically (a count read before it sees the
# deltas, one read after it sees them folded), by one gateway copy at a time (the others skip).
# Returns each folded count's name, its new value and how many deltas it took in.
FOLD_LOCK = "SELECT pg_try_advisory_xact_lock(7461627573)"
FOLD = (
    "WITH moved AS (DELETE FROM row_count_deltas RETURNING name, n), "
    "folded AS (SELECT name, sum(n) AS n, count(*) AS deltas FROM moved GROUP BY name), "
    "counted AS (INSERT INTO row_counts (name, stripe, n) SELECT name, 0, n FROM folded "
    "ON CONFLICT (name, stripe) DO UPDATE SET n = row_counts.n + excluded.n RETURNING name, n) "
    "SELECT counted.name, counted.n, folded.deltas FROM counted JOIN folded USING (name)"
)
# The counts the fold brought to 0 (a deleted task's), and only those: no scan of every count.
FOLD_ZEROS = "DELETE FROM row_counts WHERE stripe = 0 AND n = 0 AND name = ANY(:names)"
# The folded deltas stay in the table's index as dead entries until a vacuum, and a count's read
# walks its name's dead entries too: 20,000 of them made it 1.1 ms instead of 0.15. So the fold
# vacuums the deltas itself once this many are dead, instead of waiting for autovacuum (a minute
# or more, while writes append thousands a second). SKIP_LOCKED: another copy is at it already.
VACUUM_AFTER = 2000
VACUUM_DELTAS = "VACUUM (SKIP_LOCKED) row_count_deltas"


class Logs:
    """The prepared reads of a run's log, one per page size (written in, as a list page's is)."""

    def __init__(self) -> None:
        self._queries: dict[int, Query] = {}

    def query(self, limit: int) -> Query:
        found = self._queries.get(limit)
        if found is None:
            found = self._queries[limit] = Query(
                f"run_log_{int(limit)}",
                'SELECT "payload" FROM "run_events" WHERE "run_id" = ? AND "seq" > ? ORDER BY "seq"'
                f" LIMIT {int(limit)}",
                [Column("payload", Text)],
                [run_events.c.run_id, run_events.c.seq],
            )
        return found


LAST_EVENT = Query(
    "run_last_event",
    'SELECT "payload" FROM "run_events" WHERE "run_id" = ? AND "event_type" = ? ORDER BY "seq" DESC LIMIT 1',
    [Column("payload", Text)],
    [run_events.c.run_id, run_events.c.event_type],
)
LOG_TOTAL = Query(
    "run_log_total",
    'SELECT count(*) AS n FROM "run_events" WHERE "run_id" = ? AND "seq" > ?',
    [Column("n", Integer)],
    [run_events.c.run_id, run_events.c.seq],
)

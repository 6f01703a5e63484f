"""One row by primary key, the hottest read (`GET /api/tasks/{id}`, `GET /api/runs/{id}`, every
handler that loads its resource first), without the costs the profile showed around it.

- SQLite: the query runs inline on the event loop's thread over a plain sqlite3 connection (its
  values converted by the columns' own SQLAlchemy result processors). A primary-key lookup takes
  tens of microseconds; through aiosqlite it took a BEGIN, the query, a cursor close and a
  ROLLBACK, each a round trip to the connection's own thread, and those thread
  hand-offs were most of the request's cost (about 2 ms of CPU per GET on 2 cores). Under WAL a
  reader never waits for a writer; the connection's busy timeout is short, and a busy database
  sends the read through the async engine instead of blocking the loop.
- PostgreSQL: a few connections of its own, held (no pool checkout per read), in autocommit and
  without pre-ping, the query sent straight to asyncpg: one round trip instead of three (ping,
  query, rollback). A connection found broken is dropped and the read retried once through the
  main engine, which pings.

Reads here see the latest committed state, like the async engine's. The store owns the reader.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import Table, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import sqltypes

from agentbus.common.db import UTCDateTime
from agentbus.gateway.store.held import HeldConnections

log = logging.getLogger(__name__)


def _inline_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=20")  # never block the loop for long: fall back instead
    cur.execute("PRAGMA query_only=ON")
    cur.close()


class Query:
    """One read in the driver's own SQL (`?` placeholders; `$1`, `$2` ... on PostgreSQL), and how
    its tuples become rows: named tuples (`row.column`, like a SQLAlchemy row) whose values the
    selected columns' SQLAlchemy types have converted (JSON text, datetimes kept as text on
    SQLite; asyncpg already returns what SQLAlchemy would: its JSON codecs are SQLAlchemy's).
    Parameters go through the bound columns' SQLAlchemy types the same way.

    The JSON columns named in `raw` come back as their JSON text (`msgspec.Raw`, None for SQL NULL)
    instead of decoded: a page of rows sent straight out as JSON need not parse and re-encode what
    the database already holds as JSON (on PostgreSQL the SQL must select them as `::text`)."""

    def __init__(
        self,
        name: str,
        sql: str,
        columns: Sequence[Any],
        binds: Sequence[Any] = (),
        pg_sql: str | None = None,
        raw: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.sql = sql
        # PostgreSQL: the same SQL with numbered parameters, unless it needs its own.
        self.pg_sql = pg_sql or numbered(sql)
        self.columns = list(columns)
        self.binds = list(binds)
        self.raw = frozenset(raw)
        self.row: type = collections.namedtuple(f"{name}_row", [c.name for c in self.columns])  # type: ignore[misc]
        self._results: list[tuple[int, Callable[[Any], Any]]] | None = None
        self._params: list[Callable[[Any], Any] | None] | None = None

    def prepare(self, dialect: Any) -> None:
        results, params = [], []
        for i, column in enumerate(self.columns):
            if column.name in self.raw:
                process: Callable[[Any], Any] | None = _raw_json
            elif dialect.name == "sqlite":
                process = _sqlite_result(column, dialect)
            else:
                continue
            if process is not None:
                results.append((i, process))
        for column in self.binds:
            params.append(
                None if column is None else column.type.dialect_impl(dialect).bind_processor(dialect)
            )
        self._results, self._params = results, params

    def params(self, values: Sequence[Any]) -> tuple[Any, ...]:
        assert self._params is not None
        return tuple(v if p is None or v is None else p(v) for p, v in zip(self._params, values, strict=True))

    def rows(self, found: Sequence[Any]) -> list[Any]:
        processors, make = self._results, self.row
        if not processors:
            return [make(*r) for r in found]
        out = []
        for r in found:
            values = list(r)
            for i, process in processors:
                values[i] = process(values[i])
            out.append(make(*values))
        return out


def numbered(sql: str, first: int = 1) -> str:
    """SQL with `?` placeholders in PostgreSQL's `$1`, `$2` ... form (from `$first`)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], first))


def _utc_from_text(value: str | None) -> datetime | None:
    # Kept as naive UTC text; an offset in the text is several times cheaper than `replace`.
    return None if value is None else datetime.fromisoformat(value + "+00:00")


def _json_from_text(value: str | bytes | None) -> Any:
    return None if value is None else msgspec.json.decode(value)


def _raw_json(value: str | None) -> msgspec.Raw | None:
    # SQL NULL and a stored JSON null both read as None, as they do decoded.
    return None if value is None or value == "null" else msgspec.Raw(value)


def _sqlite_result(column: Any, dialect: Any) -> Callable[[Any], Any] | None:
    """How a SQLite value becomes what SQLAlchemy would return. Datetimes (kept as UTC text) and JSON
    are the costly ones in a page of rows: the same values, parsed by `datetime.fromisoformat` and
    msgspec instead of SQLAlchemy's regular expression and `json.loads`."""
    if isinstance(column.type, UTCDateTime):
        return _utc_from_text
    impl = column.type.dialect_impl(dialect)
    if isinstance(impl, sqltypes.JSON):
        return _json_from_text
    return impl.result_processor(dialect, None)


def by_id(table: Table) -> Query:
    columns = list(table.c)
    names = ", ".join(f'"{c.name}"' for c in columns)
    return Query(
        f"{table.name}_by_id", f'SELECT {names} FROM "{table.name}" WHERE id = ?', columns, [table.c.id]
    )


class RowReader:
    def __init__(self, engine: AsyncEngine, pg_connections: int = 8) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.inline: Engine | None = None
        self.pg: HeldConnections | None = None
        url = engine.url
        if engine.dialect.name == "sqlite" and url.database not in (None, "", ":memory:"):
            self.inline = create_engine(
                url.set(drivername="sqlite+pysqlite"),
                poolclass=StaticPool,  # only ever used from the loop's thread, one query at a time
                connect_args={"check_same_thread": False, "timeout": 0.02},
            )
            event.listen(self.inline, "connect", _inline_pragmas)
        elif engine.dialect.name == "postgresql":
            self.pg = HeldConnections(
                create_async_engine(
                    url,
                    pool_size=pg_connections,
                    max_overflow=0,
                    pool_pre_ping=False,
                    isolation_level="AUTOCOMMIT",
                ),
                pg_connections,
            )
        self._by_id: dict[str, Query] = {}
        self._prepared: set[int] = set()
        self._sqlite_conn: Any = None  # the inline engine's one connection, checked out for good

    def _inline(self, query: Query, params: tuple[Any, ...]) -> list[Any]:
        """Straight over sqlite3: SQLAlchemy's connection and result handling around the query
        cost more than the query."""
        assert self.inline is not None
        if self._sqlite_conn is None:
            self._sqlite_conn = self.inline.raw_connection()
        return self._sqlite_conn.driver_connection.execute(query.sql, params).fetchall()

    async def _pg_fetch(self, query: Query, params: tuple[Any, ...]) -> list[Any]:
        """Straight to asyncpg (a prepared statement it caches) on a connection this reader holds:
        SQLAlchemy's statement execution was a third of the request's CPU in the profile, and a
        pool checkout and return about a fifth of what was left."""
        assert self.pg is not None
        return await self.pg.fetch(query.pg_sql, *params)

    async def fetch(self, query: Query, values: Sequence[Any]) -> list[Any]:
        """The query's rows (attributes named after the selected columns)."""
        if id(query) not in self._prepared:
            query.prepare(self.dialect)
            self._prepared.add(id(query))
        params = query.params(values)
        if self.inline is not None:
            try:
                return query.rows(self._inline(query, params))
            except sqlite3.OperationalError as exc:  # busy or locked: let a thread wait for it
                log.debug("inline read fell back: %s", exc)
        elif self.pg is not None:
            try:
                return query.rows(await self._pg_fetch(query, params))
            except Exception as exc:  # a connection the server dropped (restart): retry below
                log.debug("read connection failed, retrying through the main engine: %r", exc)
        sql = query.pg_sql if self.dialect.name == "postgresql" else query.sql
        async with self.engine.connect() as conn:
            return query.rows((await conn.exec_driver_sql(sql, params)).all())

    async def one(self, table: Table, key: str) -> Any:
        """The row with this primary key (attributes named after the columns), or None."""
        query = self._by_id.get(table.name)
        if query is None:
            query = self._by_id[table.name] = by_id(table)
        found = await self.fetch(query, (key,))
        return found[0] if found else None

    async def close(self) -> None:
        if self._sqlite_conn is not None:
            self._sqlite_conn.close()
            self._sqlite_conn = None
        if self.inline is not None:
            self.inline.dispose()
        if self.pg is not None:
            await self.pg.close()

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

import asyncio
import collections
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy import Table, bindparam, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)


def _inline_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=20")  # never block the loop for long: fall back instead
    cur.execute("PRAGMA query_only=ON")
    cur.close()


class _Read(NamedTuple):
    """A table's primary-key query in the driver's own SQL, and how its tuple becomes a row."""

    sql: str
    # SQLite: the columns' SQLAlchemy result processors (JSON text, datetimes kept as text).
    # asyncpg already returns what SQLAlchemy would: its JSON codecs are SQLAlchemy's.
    processors: list[tuple[int, Callable[[Any], Any]]]
    row: type  # a named tuple: `row.column`, like a SQLAlchemy row


def _read(table: Table, dialect: Any, placeholder: str) -> _Read:
    columns = list(table.c)
    processors = []
    if dialect.name == "sqlite":
        for i, column in enumerate(columns):
            process = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if process is not None:
                processors.append((i, process))
    names = ", ".join(f'"{c.name}"' for c in columns)
    return _Read(
        sql=f'SELECT {names} FROM "{table.name}" WHERE id = {placeholder}',
        processors=processors,
        row=collections.namedtuple(f"{table.name}_row", [c.name for c in columns]),  # type: ignore[misc]
    )


def _row(read: _Read, found: Any) -> Any:
    if found is None:
        return None
    if not read.processors:
        return read.row(*found)
    values = list(found)
    for i, process in read.processors:
        values[i] = process(values[i])
    return read.row(*values)


class RowReader:
    def __init__(self, engine: AsyncEngine, pg_connections: int = 8) -> None:
        self.engine = engine
        self.pg_connections = pg_connections
        self.inline: Engine | None = None
        self.pg: AsyncEngine | None = None
        url = engine.url
        if engine.dialect.name == "sqlite" and url.database not in (None, "", ":memory:"):
            self.inline = create_engine(
                url.set(drivername="sqlite+pysqlite"),
                poolclass=StaticPool,  # only ever used from the loop's thread, one query at a time
                connect_args={"check_same_thread": False, "timeout": 0.02},
            )
            event.listen(self.inline, "connect", _inline_pragmas)
        elif engine.dialect.name == "postgresql":
            # Connections made by SQLAlchemy (its connect arguments, its JSON codecs), then held.
            self.pg = create_async_engine(
                url,
                pool_size=pg_connections,
                max_overflow=0,
                pool_pre_ping=False,
                isolation_level="AUTOCOMMIT",
            )
        self._by_id: dict[str, Any] = {}
        self._reads: dict[str, _Read] = {}
        self._sqlite_conn: Any = None  # the inline engine's one connection, checked out for good
        # Held PostgreSQL connections, (SQLAlchemy connection, asyncpg connection), or None for a
        # slot whose connection is yet to be made (or was dropped). Last in, first out: a light
        # load keeps reusing one connection and opens no others.
        self._pg_slots: asyncio.LifoQueue[tuple[AsyncConnection, Any] | None] | None = None

    def _stmt(self, table: Table) -> Any:
        stmt = self._by_id.get(table.name)
        if stmt is None:
            stmt = self._by_id[table.name] = select(table).where(table.c.id == bindparam("key"))
        return stmt

    def _read(self, table: Table, dialect: Any, placeholder: str) -> _Read:
        read = self._reads.get(table.name)
        if read is None:
            read = self._reads[table.name] = _read(table, dialect, placeholder)
        return read

    def _inline_one(self, table: Table, key: str) -> Any:
        """Straight over sqlite3: SQLAlchemy's connection and result handling around the query
        cost more than the query."""
        assert self.inline is not None
        read = self._read(table, self.inline.dialect, "?")
        if self._sqlite_conn is None:
            self._sqlite_conn = self.inline.raw_connection()
        return _row(read, self._sqlite_conn.driver_connection.execute(read.sql, (key,)).fetchone())

    async def _pg_one(self, table: Table, key: str) -> Any:
        """Straight to asyncpg (a prepared statement it caches) on a connection this reader holds:
        SQLAlchemy's statement execution was a third of the request's CPU in the profile, and a
        pool checkout and return about a fifth of what was left. A connection that fails is
        dropped (its slot makes a new one next time) and the error raised."""
        assert self.pg is not None
        if self._pg_slots is None:
            self._pg_slots = asyncio.LifoQueue()
            for _ in range(self.pg_connections):
                self._pg_slots.put_nowait(None)
        slots = self._pg_slots
        held = await slots.get()
        conn = held[0] if held is not None else None
        try:
            if held is None:
                conn = await self.pg.connect()
                held = (conn, (await conn.get_raw_connection()).driver_connection)
            read = self._read(table, self.pg.dialect, "$1")
            found = await held[1].fetchrow(read.sql, key)
        except BaseException:
            slots.put_nowait(None)  # first: the slot is never lost, even if the drop is cancelled
            if conn is not None:
                await _drop(conn)
            raise
        slots.put_nowait(held)
        return _row(read, found)

    async def one(self, table: Table, key: str) -> Any:
        """The row with this primary key (attributes named after the columns), or None."""
        if self.inline is not None:
            try:
                return self._inline_one(table, key)
            except sqlite3.OperationalError as exc:  # busy or locked: let a thread wait for it
                log.debug("inline read fell back: %s", exc)
        elif self.pg is not None:
            try:
                return await self._pg_one(table, key)
            except Exception as exc:  # a connection the server dropped (restart): retry below
                log.debug("read connection failed, retrying through the main engine: %r", exc)
        async with self.engine.connect() as conn:
            return (await conn.execute(self._stmt(table), {"key": key})).first()

    async def close(self) -> None:
        if self._sqlite_conn is not None:
            self._sqlite_conn.close()
            self._sqlite_conn = None
        if self._pg_slots is not None:
            while not self._pg_slots.empty():
                held = self._pg_slots.get_nowait()
                if held is not None:
                    await held[0].close()
            self._pg_slots = None
        if self.inline is not None:
            self.inline.dispose()
        if self.pg is not None:
            await self.pg.dispose()


async def _drop(conn: AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()

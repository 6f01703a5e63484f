"""One row by primary key, the hottest read (`GET /api/tasks/{id}`, `GET /api/runs/{id}`, every
handler that loads its resource first), without the costs the profile showed around it.

- SQLite: the query runs inline on the event loop's thread over a plain sqlite3 connection. A
  primary-key lookup takes tens of microseconds; through aiosqlite it took a BEGIN, the query, a
  cursor close and a ROLLBACK, each a round trip to the connection's own thread, and those thread
  hand-offs were most of the request's cost (about 2 ms of CPU per GET on 2 cores). Under WAL a
  reader never waits for a writer; the connection's busy timeout is short, and a busy database
  sends the read through the async engine instead of blocking the loop.
- PostgreSQL: its own small pool in autocommit without pre-ping, so a read is one round trip
  instead of three (ping, query, rollback). A connection found broken is dropped and the read
  retried once through the main engine, which pings.

Reads here see the latest committed state, like the async engine's.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from sqlalchemy import Table, bindparam, create_engine, event, select
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)


def _inline_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=20")  # never block the loop for long: fall back instead
    cur.execute("PRAGMA query_only=ON")
    cur.close()


class RecordRow:
    """An asyncpg record read like a SQLAlchemy row (`row.column`)."""

    __slots__ = ("_record",)

    def __init__(self, record: Any) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        try:
            return self._record[name]
        except KeyError:
            raise AttributeError(name) from None


class RowReader:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
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
            # No overflow: connections opened and closed per request under load (TLS negotiation
            # included) showed in the profile; waiting for a pooled one is cheaper.
            self.pg = create_async_engine(
                url, pool_size=8, max_overflow=0, pool_pre_ping=False, isolation_level="AUTOCOMMIT"
            )
        self._by_id: dict[str, Any] = {}
        self._pg_sql: dict[str, str] = {}

    def _stmt(self, table: Table) -> Any:
        stmt = self._by_id.get(table.name)
        if stmt is None:
            stmt = self._by_id[table.name] = select(table).where(table.c.id == bindparam("key"))
        return stmt

    def _sql(self, table: Table) -> str:
        sql = self._pg_sql.get(table.name)
        if sql is None:
            columns = ", ".join(f'"{c.name}"' for c in table.c)
            sql = self._pg_sql[table.name] = f'SELECT {columns} FROM "{table.name}" WHERE id = $1'
        return sql

    async def one(self, table: Table, key: str) -> Row[Any] | RecordRow | None:
        stmt = self._stmt(table)
        if self.inline is not None:
            try:
                with self.inline.connect() as conn:
                    return conn.execute(stmt, {"key": key}).first()
            except OperationalError as exc:  # busy or locked: let a thread wait for it
                log.debug("inline read fell back: %s", exc)
        elif self.pg is not None:
            try:
                async with self.pg.connect() as conn:
                    # Straight to asyncpg (a prepared statement it caches): SQLAlchemy's statement
                    # execution was a third of the request's CPU in the profile.
                    raw = (await conn.get_raw_connection()).driver_connection
                    try:
                        found = await raw.fetchrow(self._sql(table), key)
                    except Exception:
                        await conn.invalidate()
                        raise
                    return None if found is None else RecordRow(found)
            except Exception as exc:  # a connection the server dropped (restart): retry below
                log.debug("read pool connection failed, retrying through the main engine: %r", exc)
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt, {"key": key})).first()

    async def close(self) -> None:
        if self.inline is not None:
            self.inline.dispose()
        if self.pg is not None:
            await self.pg.dispose()


_readers: weakref.WeakKeyDictionary[AsyncEngine, RowReader] = weakref.WeakKeyDictionary()


def reader(engine: AsyncEngine) -> RowReader:
    """The reader for an engine, made on first use (it lives as long as the engine)."""
    found = _readers.get(engine)
    if found is None:
        found = _readers[engine] = RowReader(engine)
    return found


async def by_id(engine: AsyncEngine, table: Table, key: str) -> Row[Any] | None:
    return await reader(engine).one(table, key)


async def dispose(engine: AsyncEngine) -> None:
    """Close the engine's reader connections (at shutdown, with the engine)."""
    found = _readers.pop(engine, None)
    if found is not None:
        await found.close()

"""Database plumbing shared by the services that own tables (gateway, metrics).

SQLite (aiosqlite, WAL) is the one-machine default; PostgreSQL through
asyncpg in production. The same models and migrations serve both.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DataError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)

# none_as_null: a Python None is SQL NULL (filterable with IS NULL), not the JSON text "null".
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Always UTC-aware in Python, whatever the backend keeps (SQLite keeps naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalize_url(url: str) -> str:
    """Accept plain `postgresql://` / `sqlite:///` URLs and pick the async drivers."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url[len("postgresql://") :]
    if url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


# Raised before a value reaches the database (asyncpg's own DataError is a ValueError too).
_UNSENDABLE = OverflowError | ValueError | RecursionError


def is_poison(exc: BaseException) -> bool:
    """An error no retry can fix: the data itself cannot be stored (e.g. a NUL in a PostgreSQL string).

    asyncpg's data errors reach us as plain DBAPIErrors, so look at the SQLSTATE
    class too: 22 (data exception) and 23 (integrity violation). A value the driver cannot even
    send is one too: an int too big for the column, a date out of range once in UTC (SQLAlchemy
    wraps those in a StatementError), text that is not valid, nesting deeper than the JSON encoder
    recurses. Anything else (a refused connection, a server shutting down) is worth retrying.
    """
    if isinstance(exc, DataError | IntegrityError | _UNSENDABLE):
        return True
    if isinstance(exc, StatementError) and isinstance(exc.orig, _UNSENDABLE):
        return True
    # Through SQLAlchemy the driver's error is `exc.orig`; a raw asyncpg error carries its own.
    sqlstate = getattr(
        getattr(exc, "orig", None) if isinstance(exc, StatementError) else exc, "sqlstate", None
    )
    return isinstance(sqlstate, str) and sqlstate[:2] in ("22", "23")


def redact(url: str) -> str:
    """The URL with its password hidden, for logs and errors."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Take transaction control away from pysqlite, which only begins a transaction at the first
    # write: a read-then-write unit of work would read outside its transaction and could overwrite
    # another writer's commit (a lost update). `_sqlite_begin` starts real transactions instead.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # A unit of work that reads, then writes what it read, asks for `sqlite_immediate`: it takes the
    # write lock up front (waiting for it under busy_timeout). Any other transaction is deferred; under
    # WAL, a deferred one whose snapshot went stale fails on write (SQLITE_BUSY) rather than overwrite.
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_events(engine: Any, immediate: bool = False) -> None:
    event.listen(engine, "connect", _sqlite_pragmas)
    if immediate:
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    else:
        event.listen(engine, "begin", _sqlite_begin)


def read_then_write(engine: AsyncEngine) -> AsyncEngine:
    """The engine for a unit of work that writes what it read: on SQLite it locks from the start."""
    return engine.execution_options(sqlite_immediate=True)


def sync_sqlite_engine(url: str | URL) -> Engine | None:
    """A plain sqlite3 engine on the same SQLite file, for work done in a thread of its own (one
    hand-off per unit of work instead of one per statement); None for other databases and for an
    in-memory SQLite, which another connection would not see."""
    parsed = make_url(normalize_url(url)) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    engine = create_engine(
        parsed.set(drivername="sqlite+pysqlite"), connect_args={"timeout": 30, "check_same_thread": False}
    )
    _sqlite_events(engine, immediate=True)  # it serves the writer thread (agentbus.gateway.store.writer)
    return engine


def make_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _sqlite_events(engine.sync_engine)
        return engine
    # No overflow: an overflow connection is closed when it is returned to a full pool, so under a
    # burst every request past the pool opened and closed a PostgreSQL connection of its own (a new
    # server process, ms of CPU on both sides). A fixed pool makes a burst wait its turn instead.
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True, pool_recycle=1800
    )


def _upgrade(connection: Connection, script_location: str, version_table: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    cfg.attributes["connection"] = connection
    cfg.attributes["version_table"] = version_table
    if connection.dialect.name == "postgresql":
        # Several copies may start at once: one migrates, the others wait for it.
        from sqlalchemy import text

        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:t))"), {"t": version_table})
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine, script_location: str, version_table: str) -> None:
    """Run the owning service's Alembic migrations to head.

    Copies starting together are serialized: PostgreSQL by an advisory lock
    (in `_upgrade`), SQLite (one machine) by an exclusive lock on a file beside
    the database, since SQLite runs DDL outside Alembic's transaction.
    """
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, script_location, version_table)
        return
    import fcntl

    lock = await asyncio.to_thread(open, f"{database}.migrate.lock", "w")
    try:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, script_location, version_table)
    finally:
        lock.close()  # closing releases the lock


async def wait_for_database(engine: AsyncEngine, attempts: int = 60) -> None:
    from sqlalchemy import text

    for i in range(attempts):
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return
        except Exception as exc:
            if i == attempts - 1:
                raise
            log.info("waiting for the database (%s): %s", redact(str(engine.url)), type(exc).__name__)
            await asyncio.sleep(1)

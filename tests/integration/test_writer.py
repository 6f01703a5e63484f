"""`agentbus.gateway.store.writer.Writer` on a real SQLite file and a real PostgreSQL: every unit commits
or rolls back on its own, even when many are committed in one transaction."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from agentbus.common.db import make_engine
from agentbus.gateway.store.writer import Writer
from tests.support.servers import create_database

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
    Column("counter", Integer, nullable=False, default=0),
)


@pytest.fixture
async def engine(database_url: str):
    engine = make_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def test_units_commit_alone_even_when_batched(engine) -> None:
    writer = Writer(engine)
    try:

        def add(i: int):
            return lambda conn: conn.execute(
                insert(items).returning(items.c.id), {"id": i, "name": f"n{i}"}
            ).scalar()

        def broken(conn):
            conn.execute(insert(items), {"id": 10_000, "name": "half"})
            conn.execute(insert(items), {"id": 1, "name": "duplicate"})  # primary key taken: the unit fails

        # Queued together, so on SQLite most of them share transactions.
        results = await asyncio.gather(
            *(writer(add(i)) for i in range(1, 201)), writer(broken), return_exceptions=True
        )
        assert results[:200] == list(range(1, 201))
        assert isinstance(results[200], IntegrityError)
        async with engine.connect() as conn:
            ids = (await conn.execute(select(items.c.id).order_by(items.c.id))).scalars().all()
        assert ids == list(range(1, 201))  # the failed unit's first insert was rolled back with it
    finally:
        await writer.close()


async def test_read_then_write_units_do_not_lose_updates(engine) -> None:
    writer = Writer(engine)
    try:
        await writer(lambda conn: conn.execute(insert(items), {"id": 1, "name": "c", "counter": 0}))

        def increment(conn):
            value = conn.execute(
                select(items.c.counter).where(items.c.id == 1).with_for_update()
            ).scalar_one()
            conn.execute(update(items).where(items.c.id == 1).values(counter=value + 1))

        await asyncio.gather(*(writer(increment) for _ in range(100)))
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.sum(items.c.counter)))).scalar_one() == 100
    finally:
        await writer.close()


async def test_close_finishes_queued_units(engine) -> None:
    writer = Writer(engine)
    pending = [
        asyncio.ensure_future(writer(lambda conn, i=i: conn.execute(insert(items), {"id": i, "name": "x"})))
        for i in range(1, 51)
    ]
    # Tasks start in the order they were made: every unit is queued before close() asks to stop.
    await asyncio.gather(asyncio.ensure_future(writer.close()), *pending)
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(items))).scalar_one() == 50


async def test_sqlite_wal_is_checkpointed_off_the_commit_path(tmp_path) -> None:
    """The writer's commits never checkpoint (that stalled them); its checkpointer thread does, and
    a last time at close: the rows are then in the database file itself, not only in its WAL."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/wal.db")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    async with engine.connect() as held:  # an open connection: closing the writer's is not the last close
        await held.exec_driver_sql("SELECT 1")
        writer = Writer(engine)
        for i in range(1, 101):
            await writer(lambda conn, i=i: conn.execute(insert(items), {"id": i, "name": "x" * 1000}))
        await writer.close()
        copy = tmp_path / "copy.db"
        copy.write_bytes((tmp_path / "wal.db").read_bytes())  # the main file alone, without its -wal
        with sqlite3.connect(copy) as db:
            assert db.execute("SELECT count(*) FROM items").fetchone()[0] == 100
    await engine.dispose()


async def test_postgresql_write_survives_its_connection_being_dropped(pg_admin_url: str) -> None:
    """No ping per write: a pooled connection the server dropped (a restart) fails at its first
    use, before anything was committed, and the write is retried once on a fresh connection."""
    url = await asyncio.to_thread(create_database, pg_admin_url, f"w_{uuid.uuid4().hex[:12]}")
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    writer = Writer(engine)
    try:
        await writer(lambda conn: conn.execute(insert(items), {"id": 1, "name": "before"}))
        async with engine.connect() as conn:  # drop every other session of this database
            killed = await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            assert any(row[0] for row in killed)  # the writer's pooled connection was among them
        await writer(lambda conn: conn.execute(insert(items), {"id": 2, "name": "after"}))
        async with engine.connect() as conn:
            ids = (await conn.execute(select(items.c.id).order_by(items.c.id))).scalars().all()
        assert ids == [1, 2]
    finally:
        await writer.close()
        await engine.dispose()


async def test_postgresql_bursts_of_writes_reuse_the_same_connections(pg_admin_url: str) -> None:
    """Bursts wider than the pool wait their turn rather than open connections of their own that are
    closed again once the burst is over (a PostgreSQL server process started per write)."""
    url = await asyncio.to_thread(create_database, pg_admin_url, f"w_{uuid.uuid4().hex[:12]}")
    engine = make_engine(url, pool_size=4)
    writer = Writer(engine)

    async def engine_pid() -> int:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()

    try:
        writer_pids: set[int] = set()
        engine_pids: set[int] = set()
        for _ in range(3):  # each burst ends before the next: a connection beyond the pool would be closed
            writer_pids |= set(
                await asyncio.gather(
                    *(
                        writer(lambda conn: conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
                        for _ in range(60)
                    )
                )
            )
            engine_pids |= set(await asyncio.gather(*(engine_pid() for _ in range(60))))
        assert 1 <= len(writer_pids) <= 8  # the writer's pool
        assert 1 <= len(engine_pids) <= 4
    finally:
        await writer.close()
        await engine.dispose()

"""`agentbus.gateway.store.reads`, the primary-key read every handler starts with, on a real SQLite file
and a real PostgreSQL: the same values as a SQLAlchemy query, the latest committed state, and a
connection the server dropped costs one fallback, not an error."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

from sqlalchemy import select, text, update

from agentbus.gateway.store.reads import RowReader
from agentbus.gateway.store.tables import runs, tasks
from tests.support.gateway_db import engine_with_a_run
from tests.support.servers import create_database

T0 = datetime(2026, 1, 1, 12, 30, 15, 123456, tzinfo=UTC)


async def _engine_with_a_run(url: str):
    return await engine_with_a_run(
        url,
        T0,
        task={"config": {"nested": [1, "two", None]}, "agent_config": {}, "require_approval": True},
        run={"require_approval": True, "plan": {"steps": [{"title": "a"}]}, "started_at": T0},
    )


async def test_reads_match_a_sqlalchemy_query_and_see_later_commits(database_url: str) -> None:
    engine = await _engine_with_a_run(database_url)
    reader = RowReader(engine)
    try:
        for table, key in ((tasks, "t"), (runs, "r")):
            async with engine.connect() as conn:
                expected = (await conn.execute(select(table).where(table.c.id == key))).one()._asdict()
            row = await reader.one(table, key)
            got = {c.name: getattr(row, c.name) for c in table.c}
            assert got == expected
        row = await reader.one(tasks, "t")
        assert row.created_at == T0 and row.created_at.tzinfo is not None
        assert row.config == {"nested": [1, "two", None]}
        assert await reader.one(tasks, "missing") is None

        async with engine.begin() as conn:  # committed elsewhere after the reader's first read
            await conn.execute(update(tasks).where(tasks.c.id == "t").values(name="renamed"))
        assert (await reader.one(tasks, "t")).name == "renamed"
    finally:
        await reader.close()
        await engine.dispose()


async def test_postgresql_read_survives_its_connections_being_dropped(pg_admin_url: str, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="agentbus.gateway.store.reads")
    url = await asyncio.to_thread(create_database, pg_admin_url, f"r_{uuid.uuid4().hex[:12]}")
    engine = await _engine_with_a_run(url)
    reader = RowReader(engine)
    try:
        assert (await reader.one(tasks, "t")).name == "t"  # the reader now holds a connection
        async with engine.connect() as conn:  # drop every other session of this database
            killed = await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            assert any(row[0] for row in killed)
        for _ in range(3):  # the broken one is dropped and the read answered; then a fresh one
            assert (await reader.one(runs, "r")).plan == {"steps": [{"title": "a"}]}
        fallbacks = [r for r in caplog.records if "retrying through the main engine" in r.getMessage()]
        assert len(fallbacks) == 1  # the held connection did fail, once; its replacement did not
    finally:
        await reader.close()
        await engine.dispose()

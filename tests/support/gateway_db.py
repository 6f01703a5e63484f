"""A migrated gateway database holding one task ("t") and one run of it ("r"), for tests that work
on the stored tables directly."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.common.db import make_engine, migrate
from agentbus.gateway.store import MIGRATIONS
from agentbus.gateway.store.tables import runs, tasks


async def engine_with_a_run(
    url: str, at: datetime, task: dict[str, Any] | None = None, run: dict[str, Any] | None = None
) -> AsyncEngine:
    """`task` and `run` add or override columns of the two rows; both were created and updated `at`."""
    engine = make_engine(url)
    await migrate(engine, MIGRATIONS, "alembic_version_gateway")
    common = {"created_at": at, "updated_at": at}
    async with engine.begin() as conn:
        await conn.execute(
            insert(tasks),
            {
                "id": "t",
                "name": "t",
                "agent": "scripted",
                "require_approval": False,
                "approval_timeout_s": 60,
                "timeout_s": 60,
                "max_rounds": 1,
                "status": "running",
                **common,
                **(task or {}),
            },
        )
        await conn.execute(
            insert(runs),
            {
                "id": "r",
                "task_id": "t",
                "run_number": 1,
                "status": "running",
                "agent": "scripted",
                "require_approval": False,
                **common,
                **(run or {}),
            },
        )
    return engine

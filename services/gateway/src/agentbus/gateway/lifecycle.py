"""Cancelling and deleting runs and tasks: the parts shared by both resources."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from litestar.datastructures import State
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.common.db import read_then_write
from agentbus.contracts import RunControl
from agentbus.contracts.status import TERMINAL_RUN_STATUSES
from agentbus.gateway.models import artifacts, runs, tasks

log = logging.getLogger(__name__)


async def cancel(state: State, run_id: str, reason: str) -> None:
    await state.bus.decide(RunControl(run_id=run_id, kind="cancel", reason=reason))


async def _wait_terminal(engine: AsyncEngine, run_ids: list[str], timeout: float) -> None:
    """Give cancelled runs a moment to report `cancelled`, so their last event is not orphaned."""
    deadline = time.monotonic() + timeout
    while run_ids and time.monotonic() < deadline:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(runs.c.id, runs.c.status).where(runs.c.id.in_(run_ids)))).all()
        run_ids = [r.id for r in rows if r.status not in TERMINAL_RUN_STATUSES]
        if run_ids:
            await asyncio.sleep(0.05)


async def _cancel_live(state: State, rows: list[Any], reason: str) -> None:
    live = [r for r in rows if r.status not in TERMINAL_RUN_STATUSES]
    for r in live:
        await cancel(state, r.id, reason)
    # A run no runner has started yet has nothing to report: do not wait for it.
    started = [r.id for r in live if r.status != "pending"]
    await _wait_terminal(state.engine, started, state.settings.delete_wait_s)


async def delete_run(state: State, run: Any) -> None:
    await _cancel_live(state, [run], "run deleted")
    async with read_then_write(state.engine).begin() as conn:
        names = (await conn.execute(select(artifacts.c.name).where(artifacts.c.run_id == run.id))).scalars()
        names = list(names)
        await conn.execute(delete(runs).where(runs.c.id == run.id))
    await state.bus.delete_artifacts(run.id, names)
    await state.bus.resource_deleted(run.task_id, run.id)


async def delete_task(state: State, task_id: str) -> None:
    async with state.engine.connect() as conn:
        rows = (await conn.execute(select(runs.c.id, runs.c.status).where(runs.c.task_id == task_id))).all()
    await _cancel_live(state, list(rows), "task deleted")
    async with read_then_write(state.engine).begin() as conn:
        arts = (
            await conn.execute(
                select(artifacts.c.run_id, artifacts.c.name).where(artifacts.c.task_id == task_id)
            )
        ).all()
        await conn.execute(delete(tasks).where(tasks.c.id == task_id))
    for a in arts:
        await state.bus.delete_artifacts(a.run_id, [a.name])
    await state.bus.resource_deleted(task_id)

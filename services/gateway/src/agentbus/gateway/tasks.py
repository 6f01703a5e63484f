"""Tasks: REST controller and the logic behind it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import Parameter
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.gateway import lifecycle, reads
from agentbus.gateway.convert import task_out
from agentbus.gateway.models import tasks
from agentbus.gateway.schemas import Task, TaskCreate, TaskPage, TaskStatus, TaskUpdate

Skip = Annotated[int, Parameter(ge=0, description="items to skip")]
Limit = Annotated[int, Parameter(ge=1, le=100, description="page size, at most 100")]


# The stored row comes back from the INSERT itself (RETURNING): no second round trip to read it.
_INSERT = tasks.insert().returning(*tasks.c)


def now() -> datetime:
    return datetime.now(UTC)


async def load_task(engine: AsyncEngine, task_id: str) -> Any:
    row = await reads.by_id(engine, tasks, task_id)
    if row is None:
        raise NotFoundException(f"task {task_id} not found")
    return row


class TaskController(Controller):
    path = "/api/tasks"
    tags = ["tasks"]

    @post("/", summary="Create a task")
    async def create(self, data: TaskCreate, state: State) -> Task:
        ts = now()
        values = msgspec.structs.asdict(data)
        values["agent"] = data.agent or state.settings.default_agent
        values.update(
            id=uuid.uuid4().hex,
            status="pending",
            total_runs=0,
            successful_runs=0,
            failed_runs=0,
            next_run_number=0,
            created_at=ts,
            updated_at=ts,
        )
        row = await state.writer(lambda conn: conn.execute(_INSERT, values).one())
        return task_out(row)

    @staticmethod
    async def get_one_row(engine: AsyncEngine, task_id: str) -> Task:
        return task_out(await load_task(engine, task_id))

    @get("/", summary="List tasks, newest first")
    async def list_page(
        self, state: State, status: TaskStatus | None = None, skip: Skip = 0, limit: Limit = 10
    ) -> TaskPage:
        where = [tasks.c.status == status] if status else []
        async with state.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(tasks).where(*where))).scalar_one()
            rows = (
                await conn.execute(
                    select(tasks)
                    .where(*where)
                    .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
                    .offset(skip)
                    .limit(limit)
                )
            ).all()
        return TaskPage(items=[task_out(r) for r in rows], total=total, skip=skip, limit=limit)

    @get("/{task_id:str}", summary="Get a task")
    async def retrieve(self, task_id: str, state: State) -> Task:
        return await self.get_one_row(state.engine, task_id)

    @patch("/{task_id:str}", summary="Change a task's fields")
    async def update(self, task_id: str, data: TaskUpdate, state: State) -> Task:
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        if changes.get("config") is None:
            changes.pop("config", None)
        if changes.get("agent_config") is None:
            changes.pop("agent_config", None)
        changes["updated_at"] = now()
        stmt = tasks.update().where(tasks.c.id == task_id).values(**changes).returning(*tasks.c)
        row = await state.writer(lambda conn: conn.execute(stmt).first())
        if row is None:
            raise NotFoundException(f"task {task_id} not found")
        return task_out(row)

    @delete(
        "/{task_id:str}", status_code=204, summary="Delete a task with its runs, events, artifacts, metrics"
    )
    async def remove(self, task_id: str, state: State) -> None:
        await load_task(state.engine, task_id)
        await lifecycle.delete_task(state, task_id)

"""Tasks: the REST controller (HTTP only) and `TaskService` (the rules)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.exceptions import NotFoundException

from agentbus.gateway.access import needs
from agentbus.gateway.convert import task_out
from agentbus.gateway.errors import BODY, WRITE, documented
from agentbus.gateway.identity import LOCAL, Identity
from agentbus.gateway.lifecycle import Lifecycle
from agentbus.gateway.params import Cursor, Limit, Skip, checked_cursor, page_input, whole_numbers
from agentbus.gateway.people import audit, identity_of
from agentbus.gateway.schemas import Task, TaskCreate, TaskPage, TaskStatus, TaskUpdate, accepts
from agentbus.gateway.store import GatewayStore


def now() -> datetime:
    return datetime.now(UTC)


class TaskService:
    def __init__(
        self,
        store: GatewayStore,
        lifecycle: Lifecycle,
        default_agent: str,
        limit_changed: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.default_agent = default_agent
        self.limit_changed = limit_changed  # releases held runs the new limit has room for (admission.py)

    async def load(self, task_id: str) -> Any:
        row = await self.store.task(task_id)
        if row is None:
            raise NotFoundException(f"task {task_id} not found")
        return row

    async def create(self, data: TaskCreate, user: Identity = LOCAL) -> Task:
        ts = now()
        values = msgspec.structs.asdict(data)
        values.update(
            agent=data.agent or self.default_agent,
            id=uuid.uuid4().hex,
            status="pending",
            total_runs=0,
            successful_runs=0,
            failed_runs=0,
            next_run_number=0,
            created_at=ts,
            updated_at=ts,
        )
        entry = audit(user, "task.create", "task", values["id"], name=data.name)
        return task_out(await self.store.create_task(values, entry))

    async def update(self, task_id: str, data: TaskUpdate, user: Identity = LOCAL) -> Task:
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        entry = audit(user, "task.update", "task", task_id, fields=sorted(changes))
        for field in ("config", "agent_config"):
            if changes.get(field) is None:
                changes.pop(field, None)
        changes["updated_at"] = now()
        row = await self.store.update_task(task_id, changes, entry)
        if row is None:
            raise NotFoundException(f"task {task_id} not found")
        if "max_concurrent_runs" in changes and self.limit_changed is not None:
            await self.limit_changed(task_id)
        return task_out(row)

    async def page(self, status: str | None, skip: int, limit: int, cursor: str | None) -> TaskPage:
        with page_input():
            page = await self.store.list_tasks(status, skip, limit, checked_cursor(cursor, skip))
        return TaskPage([task_out(r) for r in page.rows], page.total, skip, limit, page.next_cursor)

    async def delete(self, task_id: str, user: Identity = LOCAL) -> None:
        await self.load(task_id)
        await self.lifecycle.delete_task(task_id, audit(user, "task.delete", "task", task_id))


class TaskController(Controller):
    path = "/api/tasks"
    tags = ["tasks"]

    @post(
        "/",
        summary="Create a task",
        responses=documented(*BODY),
        operation_class=accepts(TaskCreate),
        opt=needs("operator"),
    )
    async def create(self, data: TaskCreate, task_service: TaskService, request: Request) -> Task:
        return await task_service.create(data, identity_of(request))

    @get("/", summary="List tasks, newest first", responses=documented(503), before_request=whole_numbers)
    async def list_page(
        self,
        task_service: TaskService,
        status: TaskStatus | None = None,
        skip: Skip = 0,
        limit: Limit = 10,
        cursor: Cursor = None,
    ) -> TaskPage:
        return await task_service.page(status, skip, limit, cursor)

    @get("/{task_id:str}", summary="Get a task", responses=documented(404, 503))
    async def retrieve(self, task_id: str, task_service: TaskService) -> Task:
        return task_out(await task_service.load(task_id))

    @patch(
        "/{task_id:str}",
        summary="Change a task's fields",
        responses=documented(404, *BODY),
        operation_class=accepts(TaskUpdate),
        opt=needs("operator"),
    )
    async def update(
        self, task_id: str, data: TaskUpdate, task_service: TaskService, request: Request
    ) -> Task:
        return await task_service.update(task_id, data, identity_of(request))

    @delete(
        "/{task_id:str}",
        status_code=204,
        summary="Delete a task with its runs, events, artifacts, metrics",
        responses=documented(404, *WRITE),
        opt=needs("operator"),
    )
    async def remove(self, task_id: str, task_service: TaskService, request: Request) -> None:
        await task_service.delete(task_id, identity_of(request))

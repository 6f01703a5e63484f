"""Runs: REST controller and the logic behind it."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import Parameter
from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.contracts import RunControl, RunStart
from agentbus.contracts.status import TERMINAL_RUN_STATUSES, RunStatus
from agentbus.gateway import lifecycle, plans, reads
from agentbus.gateway.artifacts import serve as serve_artifact
from agentbus.gateway.convert import artifact_out, run_out
from agentbus.gateway.errors import Conflict, ServiceUnavailable
from agentbus.gateway.models import artifacts, run_events, runs, tasks
from agentbus.gateway.schemas import (
    ApproveBody,
    ArtifactInfo,
    CancelBody,
    EventPage,
    PlanVersion,
    Run,
    RunCreate,
    RunPage,
    RunUpdate,
)
from agentbus.gateway.tasks import Limit, Skip, load_task

log = logging.getLogger(__name__)

LogLimit = Annotated[int, Parameter(ge=1, le=1000, description="at most 1000")]
Since = Annotated[int, Parameter(ge=0, description="return events with seq > since")]


# Built once; the stored rows come back from the statements themselves (RETURNING).
_NEXT_RUN_NUMBER = (
    tasks.update()
    .where(tasks.c.id == bindparam("b_id"))
    .values(
        next_run_number=tasks.c.next_run_number + 1,
        latest_run_id=bindparam("b_run"),
        status="pending",
        last_run_at=bindparam("b_ts"),
        updated_at=bindparam("b_ts"),
    )
    .returning(tasks.c.next_run_number)
)
_INSERT_RUN = runs.insert().returning(*runs.c)
_UNQUEUED = (
    runs.update()
    .where(runs.c.id == bindparam("b_id"))
    .values(status="failed", error_message="could not be queued: broker unavailable")
)


def now() -> datetime:
    return datetime.now(UTC)


async def load_run(engine: AsyncEngine, run_id: str) -> Any:
    row = await reads.by_id(engine, runs, run_id)
    if row is None:
        raise NotFoundException(f"run {run_id} not found")
    return row


async def get_run(engine: AsyncEngine, run_id: str) -> Run:
    return run_out(await load_run(engine, run_id))


class RunController(Controller):
    path = "/api/runs"
    tags = ["runs"]

    @post("/", summary="Create a run; it is queued for execution at once")
    async def create(self, data: RunCreate, state: State) -> Run:
        task = await load_task(state.engine, data.task_id)
        await state.discovery.require(task.agent)  # 409 when no runner serves the kind
        ts = now()
        run_id = uuid.uuid4().hex
        require_approval = task.require_approval if data.require_approval is None else data.require_approval
        agent_config = task.agent_config if data.agent_config is None else data.agent_config
        values = {
            "id": run_id,
            "task_id": task.id,
            "status": "pending",
            "agent": task.agent,
            "require_approval": require_approval,
            "max_revision_rounds": task.max_revision_rounds,
            "agent_config": agent_config,
            "progress": 0.0,
            "labels": data.labels,
            "last_seq": 0,
            "created_at": ts,
            "updated_at": ts,
        }

        def store(conn: Connection) -> Any:
            # The counter update locks the task row: concurrent creates get distinct numbers.
            number = conn.execute(_NEXT_RUN_NUMBER, {"b_id": task.id, "b_run": run_id, "b_ts": ts}).scalar()
            if number is None:
                raise NotFoundException(f"task {task.id} not found")  # deleted a moment ago
            return conn.execute(_INSERT_RUN, {**values, "run_number": number}).one()

        row = await state.writer(store)
        number = row.run_number
        # Stored first, queued second: a runner's first event always finds the run.
        cmd = RunStart(
            run_id=run_id,
            task_id=task.id,
            run_number=number,
            task_name=task.name,
            task_description=task.description,
            task_config=task.config or {},
            agent=task.agent,
            agent_config=agent_config or {},
            require_approval=require_approval,
            approval_timeout_s=task.approval_timeout_s,
            timeout_s=task.timeout_s,
            max_rounds=task.max_rounds,
            max_revision_rounds=task.max_revision_rounds,
            created_at=ts,
        )
        try:
            await state.bus.start_run(cmd)
        except Exception as exc:
            log.warning("could not queue run %s: %s", run_id, type(exc).__name__)
            await state.writer(lambda conn: conn.execute(_UNQUEUED, {"b_id": run_id}))
            raise ServiceUnavailable("message broker unavailable; the run was not queued") from exc
        return run_out(row)

    @get("/", summary="List runs, newest first")
    async def list_page(
        self,
        state: State,
        task_id: str | None = None,
        status: RunStatus | None = None,
        skip: Skip = 0,
        limit: Limit = 10,
    ) -> RunPage:
        where = []
        if task_id:
            where.append(runs.c.task_id == task_id)
        if status:
            where.append(runs.c.status == status)
        async with state.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(runs).where(*where))).scalar_one()
            rows = (
                await conn.execute(
                    select(runs)
                    .where(*where)
                    .order_by(runs.c.created_at.desc(), runs.c.id.desc())
                    .offset(skip)
                    .limit(limit)
                )
            ).all()
        return RunPage(items=[run_out(r) for r in rows], total=total, skip=skip, limit=limit)

    @get("/{run_id:str}", summary="Get a run")
    async def retrieve(self, run_id: str, state: State) -> Run:
        return await get_run(state.engine, run_id)

    @patch("/{run_id:str}", summary="Change a run's labels (never its status)")
    async def update(self, run_id: str, data: RunUpdate, state: State) -> Run:
        stmt = (
            runs.update()
            .where(runs.c.id == run_id)
            .values(labels=data.labels, updated_at=now())
            .returning(*runs.c)
        )
        row = await state.writer(lambda conn: conn.execute(stmt).first())
        if row is None:
            raise NotFoundException(f"run {run_id} not found")
        return run_out(row)

    @delete("/{run_id:str}", status_code=204, summary="Delete a run; a live run is cancelled first")
    async def remove(self, run_id: str, state: State) -> None:
        await lifecycle.delete_run(state, await load_run(state.engine, run_id))

    @post("/{run_id:str}/approve", status_code=200, summary="Approve or reject the plan of a waiting run")
    async def approve(self, run_id: str, data: ApproveBody, state: State) -> Run:
        run = await load_run(state.engine, run_id)
        if run.status != "awaiting_approval" or run.approval:
            what = "already decided" if run.approval else f"is {run.status}"
            raise Conflict(f"run {run_id} is not awaiting approval ({what})")
        if data.revise and data.approved:
            raise ValidationException("`revise: true` sends a plan back: it goes with `approved: false`")
        version = await plans.waiting_version(state.engine, run_id)
        if data.revise and version is not None and version > run.max_revision_rounds:
            raise Conflict(
                f"run {run_id}: no revision rounds left (plan version {version}, "
                f"max_revision_rounds {run.max_revision_rounds}); approve it or reject it without revise"
            )
        decided_at = now()
        approval = {
            "approved": data.approved,
            "feedback": data.feedback,
            "decided_at": decided_at.isoformat().replace("+00:00", "Z"),
            "revise": data.revise,
            "plan_version": version,
        }
        async with state.engine.begin() as conn:
            # Conditional: of two concurrent decisions exactly one wins.
            result = await conn.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.status == "awaiting_approval", runs.c.approval.is_(None))
                .values(approval=approval, updated_at=decided_at)
            )
            if result.rowcount == 0:
                raise Conflict(f"run {run_id} is not awaiting approval (already decided)")
            # Stored in the bus before the commit: if the broker is down the decision is not recorded.
            await state.bus.decide(
                RunControl(
                    run_id=run_id,
                    kind="approve" if data.approved else "reject",
                    feedback=data.feedback,
                    decided_at=decided_at,
                    revise=data.revise,
                    plan_version=version,
                )
            )
        return await get_run(state.engine, run_id)

    @post("/{run_id:str}/cancel", status_code=202, summary="Cancel a run; the runner stops it")
    async def cancel(self, run_id: str, state: State, data: CancelBody | None = None) -> Run:
        run = await load_run(state.engine, run_id)
        if run.status in TERMINAL_RUN_STATUSES:
            raise Conflict(f"run {run_id} has already ended ({run.status})")
        await lifecycle.cancel(state, run_id, (data.reason if data else None) or "cancelled by user")
        return run_out(run)

    @get("/{run_id:str}/logs", summary="A run's stored events with seq > since, in seq order")
    async def logs(self, run_id: str, state: State, since: Since = 0, limit: LogLimit = 100) -> EventPage:
        await load_run(state.engine, run_id)
        async with state.engine.connect() as conn:
            where = (run_events.c.run_id == run_id, run_events.c.seq > since)
            total = (
                await conn.execute(select(func.count()).select_from(run_events).where(*where))
            ).scalar_one()
            payloads = (
                await conn.execute(
                    select(run_events.c.payload).where(*where).order_by(run_events.c.seq).limit(limit)
                )
            ).scalars()
            items = [msgspec.Raw(p.encode()) for p in payloads]
        return EventPage(items=items, total=total)

    @get("/{run_id:str}/artifacts", summary="List a run's artifacts")
    async def list_artifacts(self, run_id: str, state: State) -> list[ArtifactInfo]:
        await load_run(state.engine, run_id)
        async with state.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(artifacts).where(artifacts.c.run_id == run_id).order_by(artifacts.c.id)
                )
            ).all()
        return [artifact_out(r) for r in rows]

    @get(
        "/{run_id:str}/artifacts/{name:str}",
        summary="Download an artifact (streamed; `Range: bytes=a-b` gets a 206)",
    )
    async def get_artifact(self, run_id: str, name: str, state: State, request: Request) -> Response[Any]:
        async with state.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(artifacts).where(artifacts.c.run_id == run_id, artifacts.c.name == name)
                )
            ).first()
        if row is None:
            raise NotFoundException(f"artifact {name} of run {run_id} not found")
        return await serve_artifact(state.bus, run_id, name, row.content_type, request.headers.get("range"))

    @get("/{run_id:str}/plans", summary="Every version of the run's plan, oldest first, with its decision")
    async def list_plans(self, run_id: str, state: State) -> list[PlanVersion]:
        await load_run(state.engine, run_id)
        return await plans.versions(state.engine, run_id)

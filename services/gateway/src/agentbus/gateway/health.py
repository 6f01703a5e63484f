"""Liveness, readiness, the metrics endpoints (answered by the metrics service) and WebSocket routes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from litestar import Controller, Response, WebSocket, get, websocket
from litestar.datastructures import State
from litestar.params import Parameter
from sqlalchemy import select, text

from agentbus.contracts import MetricsGet, MetricsQuery, MetricsSummaryQuery, subjects
from agentbus.gateway import __version__
from agentbus.gateway.models import runs, tasks
from agentbus.gateway.tasks import Limit, Skip

JSON = "application/json"


@get("/health", tags=["health"], summary="Alive")
async def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__, "timestamp": datetime.now(UTC).isoformat()}


@get("/ready", tags=["health"], summary="Ready: broker, database, a runner and the metrics service answer")
async def ready(state: State) -> Response[dict[str, object]]:
    async def database() -> bool:
        try:
            async with state.engine.connect() as conn:
                await asyncio.wait_for(conn.execute(text("SELECT 1")), 2)
            return True
        except Exception:
            return False

    broker = state.bus.nc.is_connected
    db, runner, metrics = await asyncio.gather(
        database(), state.bus.ping(subjects.RUN_PING), state.bus.ping(subjects.METRICS_PING)
    )
    checks = {"broker": broker, "database": db, "runner": runner is not None, "metrics": metrics is not None}
    missing = [name for name, ok in checks.items() if not ok]
    if missing:
        body = {
            "status_code": 503,
            "detail": "not ready: " + ", ".join(missing) + " unavailable",
            "checks": checks,
        }
        return Response(body, status_code=503)
    return Response({"status": "ready", "checks": checks}, status_code=200)


class MetricsController(Controller):
    path = "/api/metrics"
    tags = ["metrics"]

    @get("/", summary="List metrics")
    async def list_page(
        self,
        state: State,
        task_id: str | None = None,
        run_id: str | None = None,
        name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        skip: Skip = 0,
        limit: Limit = 10,
    ) -> Response[bytes]:
        query = MetricsQuery(
            task_id=task_id, run_id=run_id, name=name, since=since, until=until, skip=skip, limit=limit
        )
        return Response(await state.bus.request(subjects.METRICS_QUERY, query), media_type=JSON)

    @get("/{metric_id:str}", summary="Get a metric")
    async def retrieve(self, metric_id: str, state: State) -> Response[bytes]:
        data = await state.bus.request(subjects.METRICS_GET, MetricsGet(metric_id=metric_id))
        return Response(data, media_type=JSON)

    @get("/task/{task_id:str}/summary", summary="Summary of a task's metrics")
    async def task_summary(self, task_id: str, state: State) -> Response[bytes]:
        data = await state.bus.request(subjects.METRICS_TASK_SUMMARY, MetricsSummaryQuery(task_id=task_id))
        return Response(data, media_type=JSON)

    @get("/run/{run_id:str}/summary", summary="Summary of a run's metrics")
    async def run_summary(self, run_id: str, state: State) -> Response[bytes]:
        data = await state.bus.request(subjects.METRICS_RUN_SUMMARY, MetricsSummaryQuery(run_id=run_id))
        return Response(data, media_type=JSON)


Since = Annotated[int | None, Parameter(ge=0, description="replay stored events with seq > since first")]


async def _exists(state: State, table: object, key: str) -> bool:
    async with state.engine.connect() as conn:
        return (await conn.execute(select(table.c.id).where(table.c.id == key))).first() is not None  # type: ignore[attr-defined]


@websocket("/ws/runs/{run_id:str}")
async def run_stream(socket: WebSocket, run_id: str, since: Since = None) -> None:
    state = socket.app.state
    await socket.accept()
    if not await _exists(state, runs, run_id):
        await socket.close(code=4404, reason="run not found")
        return
    await state.hub.serve(socket, run_id=run_id, since=since)


@websocket("/ws/tasks/{task_id:str}")
async def task_stream(socket: WebSocket, task_id: str, since: Since = None) -> None:
    state = socket.app.state
    await socket.accept()
    if not await _exists(state, tasks, task_id):
        await socket.close(code=4404, reason="task not found")
        return
    await state.hub.serve(socket, task_id=task_id, since=since)


@websocket("/ws/stream")
async def all_stream(socket: WebSocket) -> None:
    await socket.accept()
    await socket.app.state.hub.serve(socket)

"""`/api/metrics`: answered by the metrics service over NATS request/reply; the gateway only asks."""

from __future__ import annotations

from litestar import Controller, Response, get

from agentbus.contracts import MetricsGet, MetricsQuery, MetricsSummaryQuery, subjects
from agentbus.gateway.bus import Bus
from agentbus.gateway.params import Instant, Limit, Skip, instant

JSON = "application/json"


class MetricsController(Controller):
    path = "/api/metrics"
    tags = ["metrics"]

    @get("/", summary="List metrics")
    async def list_page(
        self,
        bus: Bus,
        task_id: str | None = None,
        run_id: str | None = None,
        name: str | None = None,
        since: Instant = None,
        until: Instant = None,
        skip: Skip = 0,
        limit: Limit = 10,
    ) -> Response[bytes]:
        query = MetricsQuery(
            task_id=task_id,
            run_id=run_id,
            name=name,
            since=instant("since", since),
            until=instant("until", until),
            skip=skip,
            limit=limit,
        )
        return Response(await bus.request(subjects.METRICS_QUERY, query), media_type=JSON)

    @get("/{metric_id:str}", summary="Get a metric")
    async def retrieve(self, metric_id: str, bus: Bus) -> Response[bytes]:
        return Response(
            await bus.request(subjects.METRICS_GET, MetricsGet(metric_id=metric_id)), media_type=JSON
        )

    @get("/task/{task_id:str}/summary", summary="Summary of a task's metrics")
    async def task_summary(self, task_id: str, bus: Bus) -> Response[bytes]:
        data = await bus.request(subjects.METRICS_TASK_SUMMARY, MetricsSummaryQuery(task_id=task_id))
        return Response(data, media_type=JSON)

    @get("/run/{run_id:str}/summary", summary="Summary of a run's metrics")
    async def run_summary(self, run_id: str, bus: Bus) -> Response[bytes]:
        data = await bus.request(subjects.METRICS_RUN_SUMMARY, MetricsSummaryQuery(run_id=run_id))
        return Response(data, media_type=JSON)

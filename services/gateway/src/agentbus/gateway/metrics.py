"""`/api/metrics`: answered by the metrics service over NATS request/reply; the gateway only asks."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.openapi.datastructures import ResponseSpec

from agentbus.contracts import MetricsGet, MetricsQuery, MetricsSummaryQuery, subjects
from agentbus.contracts.messages import MetricOut, MetricsPage, MetricsSummary
from agentbus.gateway.bus import Bus
from agentbus.gateway.errors import documented
from agentbus.gateway.params import Filter, Instant, Limit, Skip, instant, whole_numbers

JSON = "application/json"
# The metrics service's answer is passed on as it is: its shape is documented here. An error it
# answers (400, 404, 503) is passed on too; one the gateway cannot read is a 502.
UPSTREAM = (502, 503)


def _answers(shape: type, *errors: int) -> dict[int, ResponseSpec]:
    return {
        200: ResponseSpec(shape, description="OK", generate_examples=False),
        **documented(*errors, *UPSTREAM),
    }


class MetricsController(Controller):
    path = "/api/metrics"
    tags = ["metrics"]

    @get("/", summary="List metrics", responses=_answers(MetricsPage), before_request=whole_numbers)
    async def list_page(
        self,
        bus: Bus,
        task_id: Filter = None,
        run_id: Filter = None,
        name: Filter = None,
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

    @get("/{metric_id:str}", summary="Get a metric", responses=_answers(MetricOut, 404))
    async def retrieve(self, metric_id: str, bus: Bus) -> Response[bytes]:
        return Response(
            await bus.request(subjects.METRICS_GET, MetricsGet(metric_id=metric_id)), media_type=JSON
        )

    @get(
        "/task/{task_id:str}/summary",
        summary="Summary of a task's metrics",
        responses=_answers(MetricsSummary),
    )
    async def task_summary(self, task_id: str, bus: Bus) -> Response[bytes]:
        data = await bus.request(subjects.METRICS_TASK_SUMMARY, MetricsSummaryQuery(task_id=task_id))
        return Response(data, media_type=JSON)

    @get(
        "/run/{run_id:str}/summary", summary="Summary of a run's metrics", responses=_answers(MetricsSummary)
    )
    async def run_summary(self, run_id: str, bus: Bus) -> Response[bytes]:
        data = await bus.request(subjects.METRICS_RUN_SUMMARY, MetricsSummaryQuery(run_id=run_id))
        return Response(data, media_type=JSON)

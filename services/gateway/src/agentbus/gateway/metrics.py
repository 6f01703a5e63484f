"""`/api/metrics`: answered by the metrics service over NATS request/reply; the gateway only asks.

A metric posted by hand names its run: the gateway checks the run (it owns runs), takes its task and
agent kind from it, has the metrics service store the metric, and then records the `metric.create`
audit entry. That entry cannot share the metric's transaction: the metrics service stores metrics in
its own database (`METRICS_DATABASE_URL`, its own migrations), over request/reply, while the trail
is the gateway's. So the entry is written once the metrics service answered the metric stored
(`people.audit_after`): a refused metric (400, 404, 409) or an unanswered request (503) leaves none.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from msgspec import Meta

from agentbus.contracts import MetricsGet, MetricsQuery, MetricsSummaryQuery, subjects
from agentbus.contracts.kinds import AGENT_KIND_MAX_LENGTH, AGENT_KIND_PATTERN, AgentKind
from agentbus.contracts.messages import (
    METRIC_NAME_PATTERN,
    METRIC_UNIT_MAX_LENGTH,
    METRIC_VALUE_MAX,
    MetricCreate,
    MetricOut,
    MetricsPage,
    MetricsReport,
    MetricsReportQuery,
    MetricsSeries,
    MetricsSeriesQuery,
    MetricsSummary,
    SeriesBucket,
)
from agentbus.gateway.access import needs
from agentbus.gateway.bus import Bus
from agentbus.gateway.errors import BODY, documented
from agentbus.gateway.params import Filter, Instant, Limit, Skip, instant, whole_numbers
from agentbus.gateway.people import audit, audit_after, identity_of
from agentbus.gateway.schemas import Labels, accepts
from agentbus.gateway.store import GatewayStore

JSON = "application/json"
# The metrics service's answer is passed on as it is: its shape is documented here. An error it
# answers (400, 404, 409, 503) is passed on too; one the gateway cannot read is a 502. Litestar
# documents the 400 of every route that takes parameters or a body.
UPSTREAM = (502, 503)
MetricName = Annotated[str, Meta(pattern=METRIC_NAME_PATTERN, max_length=64)]


class MetricCreateBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    run_id: Annotated[str, Meta(min_length=1, max_length=64)]
    name: MetricName
    # Finite and within +-METRIC_VALUE_MAX: NaN, infinities and larger values are a 400.
    value: Annotated[float, Meta(ge=-METRIC_VALUE_MAX, le=METRIC_VALUE_MAX)]
    metric_type: Literal["timer", "counter", "gauge"] = "gauge"
    unit: Annotated[str, Meta(min_length=1, max_length=METRIC_UNIT_MAX_LENGTH)] | None = None
    labels: Annotated[Labels, Meta(max_length=50)] = msgspec.field(default_factory=dict)


def _answers(shape: type, *errors: int, why: dict[int, str] | None = None, status: int = 200) -> dict:
    return {
        status: ResponseSpec(
            shape, description="OK" if status == 200 else "Created", generate_examples=False
        ),
        **documented(*errors, *UPSTREAM, why=why),
    }


def _json(data: bytes, status_code: int = 200) -> Response[bytes]:
    return Response(data, media_type=JSON, status_code=status_code)


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
        return _json(await bus.request(subjects.METRICS_QUERY, query))

    @post(
        "/",
        status_code=201,
        summary="Record a metric of a run (its task and agent kind are the run's)",
        responses=_answers(
            MetricOut,
            404,
            409,
            *BODY,
            status=201,
            why={
                404: "the run is not found (or was deleted)",
                409: "the run already has a metric of that name",
            },
        ),
        operation_class=accepts(MetricCreateBody),
        opt=needs("operator"),
    )
    async def create(
        self,
        data: MetricCreateBody,
        bus: Bus,
        store: GatewayStore,
        request: Request,  # type: ignore[type-arg]
    ) -> Response[bytes]:
        if not math.isfinite(data.value):
            raise ValidationException("value must be a finite number")
        run = await store.run(data.run_id)
        if run is None:
            raise NotFoundException(f"run {data.run_id} not found")
        ask = MetricCreate(
            task_id=run.task_id,
            run_id=data.run_id,
            agent=run.agent,
            name=data.name,
            value=data.value,
            metric_type=data.metric_type,
            unit=data.unit,
            labels=data.labels,
        )
        answer = await bus.request(subjects.METRICS_CREATE, ask)
        created = msgspec.json.decode(answer, type=MetricOut)
        entry = audit(
            identity_of(request), "metric.create", "metric", created.id, run_id=data.run_id, name=data.name
        )
        await audit_after(store, entry)  # stored by the metrics service: the entry follows (see above)
        return _json(answer, 201)

    @get(
        "/summary",
        summary="Summary of every metric, and the runs by outcome",
        responses=_answers(MetricsReport),
    )
    async def summary(self, bus: Bus, since: Instant = None, until: Instant = None) -> Response[bytes]:
        query = MetricsReportQuery(since=instant("since", since), until=instant("until", until))
        return _json(await bus.request(subjects.METRICS_REPORT, query))

    @get(
        "/agent/{agent:str}/summary",
        summary="Summary of one agent kind's metrics, and its runs by outcome",
        responses=_answers(MetricsReport),
    )
    async def agent_summary(
        self,
        agent: Annotated[
            str, Parameter(min_length=1, max_length=AGENT_KIND_MAX_LENGTH, pattern=AGENT_KIND_PATTERN)
        ],
        bus: Bus,
        since: Instant = None,
        until: Instant = None,
    ) -> Response[bytes]:
        try:
            msgspec.convert(agent, AgentKind)
        except msgspec.ValidationError:
            raise ValidationException(f"{agent!r} is not an agent kind") from None
        query = MetricsReportQuery(agent=agent, since=instant("since", since), until=instant("until", until))
        return _json(await bus.request(subjects.METRICS_REPORT, query))

    @get(
        "/series",
        summary="One metric over time, in buckets (empty ones left out), oldest first",
        responses=_answers(MetricsSeries),
    )
    async def series(
        self,
        bus: Bus,
        name: Annotated[str, Parameter(pattern=METRIC_NAME_PATTERN, max_length=64)],
        task_id: Filter = None,
        agent: Filter = None,
        since: Instant = None,
        until: Instant = None,
        bucket: SeriesBucket = "1h",
    ) -> Response[bytes]:
        query = MetricsSeriesQuery(
            name=name,
            task_id=task_id,
            agent=agent,
            since=instant("since", since),
            until=instant("until", until),
            bucket=bucket,
        )
        return _json(await bus.request(subjects.METRICS_SERIES, query))

    @get("/{metric_id:str}", summary="Get a metric", responses=_answers(MetricOut, 404))
    async def retrieve(self, metric_id: str, bus: Bus) -> Response[bytes]:
        return _json(await bus.request(subjects.METRICS_GET, MetricsGet(metric_id=metric_id)))

    @get(
        "/task/{task_id:str}/summary",
        summary="Summary of a task's metrics",
        responses=_answers(MetricsSummary),
    )
    async def task_summary(self, task_id: str, bus: Bus) -> Response[bytes]:
        return _json(await bus.request(subjects.METRICS_TASK_SUMMARY, MetricsSummaryQuery(task_id=task_id)))

    @get(
        "/run/{run_id:str}/summary", summary="Summary of a run's metrics", responses=_answers(MetricsSummary)
    )
    async def run_summary(self, run_id: str, bus: Bus) -> Response[bytes]:
        return _json(await bus.request(subjects.METRICS_RUN_SUMMARY, MetricsSummaryQuery(run_id=run_id)))

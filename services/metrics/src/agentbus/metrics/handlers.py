"""Request/reply over core NATS as a `nats.micro` service, queue group "metrics" so every copy
shares the load.

Requests are decoded strictly; an error is answered with a ServiceError and the
`Agentbus-Error: 1` header (and micro's error headers), never left to time out.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats import micro
from nats.aio.client import Client

from agentbus.common.db import is_poison
from agentbus.contracts import encode, subjects
from agentbus.contracts.codec import decoder
from agentbus.contracts.messages import (
    ERROR_HEADER,
    METRIC_NAME_PATTERN,
    METRIC_UNIT_MAX_LENGTH,
    METRIC_VALUE_MAX,
    MetricCreate,
    MetricsGet,
    MetricsQuery,
    MetricsReportQuery,
    MetricsSeriesQuery,
    MetricsSummaryQuery,
    Ping,
    Pong,
    ServiceError,
    metric_value_ok,
)
from agentbus.metrics import __version__
from agentbus.metrics.store import MetricsStore

log = logging.getLogger(__name__)

QUEUE_GROUP = "metrics"
SERVICE_NAME = "agentbus-metrics"
MAX_LIMIT = 1000
MAX_SKIP = 2**63 - 1  # the largest OFFSET the databases take
MAX_CONCURRENT = 64  # requests in flight per copy; beyond that NATS buffers them


class RequestError(Exception):
    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.error = ServiceError(status_code=status_code, detail=detail)


_decoders = {
    tp: decoder(tp)
    for tp in (
        MetricsQuery,
        MetricsGet,
        MetricsSummaryQuery,
        Ping,
        MetricsReportQuery,
        MetricsSeriesQuery,
        MetricCreate,
    )
}
NAME = re.compile(METRIC_NAME_PATTERN)


def _decode(tp: Any, data: bytes) -> Any:
    try:
        return _decoders[tp].decode(data)
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"invalid {tp.__name__}: {exc}") from None


class RequestHandlers:
    """The query endpoints as one `nats.micro` service: `$SRV.PING|INFO|STATS[.agentbus-metrics]`
    discover the copies and report each endpoint's requests, errors and processing time."""

    def __init__(self, nc: Client, store: MetricsStore, instance: str) -> None:
        self._nc, self._store, self._instance = nc, store, instance
        self._service: micro.Service | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    async def start(self) -> None:
        routes: dict[str, tuple[str, Callable[[bytes], Awaitable[Any]]]] = {
            "query": (subjects.METRICS_QUERY, self.query),
            "get": (subjects.METRICS_GET, self.get),
            "run-summary": (subjects.METRICS_RUN_SUMMARY, self.run_summary),
            "task-summary": (subjects.METRICS_TASK_SUMMARY, self.task_summary),
            "ping": (subjects.METRICS_PING, self.ping),
            "report": (subjects.METRICS_REPORT, self.report),
            "series": (subjects.METRICS_SERIES, self.series),
            "create": (subjects.METRICS_CREATE, self.create),
        }
        config = micro.ServiceConfig(
            name=SERVICE_NAME,
            version=__version__,
            description="agentbus metrics: summaries, series and metrics of runs",
            metadata={"instance": self._instance},
            queue_group=QUEUE_GROUP,
        )
        self._service = await micro.add_service(self._nc, config)
        for name, (subject, handler) in routes.items():
            await self._service.add_endpoint(name=name, subject=subject, handler=self._dispatcher(handler))

    async def stop(self, timeout: float = 10) -> None:
        if self._service is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._service.stop(), timeout)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=timeout)

    def _dispatcher(
        self, handler: Callable[[bytes], Awaitable[Any]]
    ) -> Callable[[micro.Request], Awaitable[None]]:
        # nats.py runs one callback at a time per subscription: answer in tasks so a slow query
        # does not hold up the others, with a bound on how many run at once.
        async def cb(request: micro.Request) -> None:
            await self._slots.acquire()
            task = asyncio.create_task(self._answer(handler, request))
            self._inflight.add(task)
            task.add_done_callback(self._done)

        return cb

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _answer(self, handler: Callable[[bytes], Awaitable[Any]], request: micro.Request) -> None:
        error: ServiceError | None = None
        try:
            reply = await handler(request.data)
        except RequestError as exc:
            error = exc.error
        except Exception as exc:
            if is_poison(exc):  # a value the database cannot take (a NUL in a PostgreSQL string)
                log.warning("request on %s refused by the database: %s", request.subject, type(exc).__name__)
                error = ServiceError(status_code=400, detail="invalid request: a value the store cannot take")
            else:
                log.exception("request on %s failed", request.subject)
                error = ServiceError(status_code=503, detail="metrics store unavailable")
        try:
            if error is None:
                await request.respond(encode(reply))
            else:
                # Both conventions: ours (`Agentbus-Error`, the gateway reads it) and micro's
                # (`Nats-Service-Error`, `Nats-Service-Error-Code`: tools such as `nats micro` read it).
                await request.respond_error(
                    str(error.status_code),
                    error.detail.splitlines()[0][:200],
                    encode(error),
                    {ERROR_HEADER: "1"},
                )
        except Exception as exc:
            log.warning("could not reply on %s: %s", request.subject, exc)

    async def query(self, data: bytes) -> Any:
        q = _decode(MetricsQuery, data)
        if not 0 <= q.skip <= MAX_SKIP:
            raise RequestError(400, f"skip must be between 0 and {MAX_SKIP}")
        if not 0 <= q.limit <= MAX_LIMIT:
            raise RequestError(400, f"limit must be between 0 and {MAX_LIMIT}")
        return await self._store.page(q)

    async def get(self, data: bytes) -> Any:
        q = _decode(MetricsGet, data)
        metric = await self._store.get(q.metric_id)
        if metric is None:
            raise RequestError(404, f"metric {q.metric_id} not found")
        return metric

    async def run_summary(self, data: bytes) -> Any:
        q = _decode(MetricsSummaryQuery, data)
        if not q.run_id:
            raise RequestError(400, "run_id is required")
        return await self._store.summary("run", q.run_id)

    async def task_summary(self, data: bytes) -> Any:
        q = _decode(MetricsSummaryQuery, data)
        if not q.task_id:
            raise RequestError(400, "task_id is required")
        return await self._store.summary("task", q.task_id)

    async def ping(self, data: bytes) -> Any:
        if data:  # a bare ping with no body is fine too
            _decode(Ping, data)
        return Pong(service="metrics", instance=self._instance, version=__version__)

    async def report(self, data: bytes) -> Any:
        return await self._store.report(_decode(MetricsReportQuery, data))

    async def series(self, data: bytes) -> Any:
        q = _decode(MetricsSeriesQuery, data)
        if not NAME.search(q.name):
            raise RequestError(400, "name must match ^[a-z][a-z0-9_.]{0,63}$")
        return await self._store.series(q)

    async def create(self, data: bytes) -> Any:
        m = _decode(MetricCreate, data)
        if not NAME.search(m.name):
            raise RequestError(400, "name must match ^[a-z][a-z0-9_.]{0,63}$")
        if not metric_value_ok(m.value):
            raise RequestError(400, f"value must be a finite number within +-{METRIC_VALUE_MAX:g}")
        if m.unit is not None and len(m.unit) > METRIC_UNIT_MAX_LENGTH:
            raise RequestError(400, f"unit must be at most {METRIC_UNIT_MAX_LENGTH} characters")
        row = {
            "id": uuid.uuid4().hex,
            "task_id": m.task_id,
            "run_id": m.run_id,
            "name": m.name,
            "metric_type": m.metric_type,
            "value": m.value,
            "unit": m.unit,
            "labels": m.labels,
            "timestamp": datetime.now(UTC),
            "agent": m.agent,
            "outcome": None,
        }
        stored = await self._store.create(row)
        if stored == "gone":
            raise RequestError(404, f"run {m.run_id} was deleted")
        if stored == "exists":
            raise RequestError(409, f"run {m.run_id} already has a metric {m.name}")
        return stored

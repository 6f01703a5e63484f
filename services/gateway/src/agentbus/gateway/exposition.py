"""The gateway's Prometheus metrics: `GET /metrics` (text exposition, viewer role when
authentication is on) and the request-metrics middleware.

Requests are recorded by `RequestMetrics`, the outermost ASGI layer: one histogram observation per
HTTP request, labelled by the route's path template as Litestar matched it (`scope["path_template"]`,
never a raw id; `unmatched` when no route matched), the method and the status. The labelled child
of each (template, method, status) is looked up once and cached. Everything else (streams, the
ingest, dead letters, the reaper, the database pool, the consumer's backlog) is read at scrape time
from counters the pieces keep as plain integers (`docs/operations.md` lists every name).
"""

from __future__ import annotations

from collections.abc import Iterator
from time import perf_counter
from typing import Any

from litestar import Response, get
from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agentbus.common.prom import CONTENT_TYPE, ConsumerWatch, Scraped, new_registry, pool_metrics, render
from agentbus.contracts import subjects
from agentbus.contracts.events import TERMINAL_EVENT_TYPES
from agentbus.gateway.access import needs
from agentbus.gateway.deliveries import Deliveries
from agentbus.gateway.errors import documented
from agentbus.gateway.ingest import EventIngest
from agentbus.gateway.reaper import Reaper
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.effects import Batch
from agentbus.gateway.streams.hub import Hub

# Few buckets: each observation walks them (the GET-by-id hot path takes ~0.2 ms).
BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5)
RUN_BUCKETS = (1, 5, 15, 60, 300, 900, 3600)
METHODS = frozenset({"GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"})


class RequestMetrics:
    """ASGI middleware: `agentbus_gateway_http_request_duration_seconds` per route template."""

    def __init__(self, app: Any, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram
        self.children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 500  # what a request that raised before answering counts as

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # Every part of the key is bounded (a client's made-up method counts as `other`).
            method = scope["method"] if scope["method"] in METHODS else "other"
            key = (scope.get("path_template") or "", method, status)
            child = self.children.get(key)
            if child is None:
                child = self.children[key] = self.histogram.labels(key[0] or "unmatched", method, str(status))
            child.observe(perf_counter() - start)


class Exposition:
    """The gateway's registry: the request histogram and what is read from the pieces at scrape time."""

    def __init__(self, store: GatewayStore, bus: Any) -> None:
        self.store = store
        self.hub: Hub | None = None
        self.ingest: EventIngest | None = None
        self.reaper: Reaper | None = None
        self.deliveries: Deliveries | None = None
        self.registry = new_registry()
        self.runs_ended = Counter(
            "agentbus_runs_ended",
            "runs ended (terminal events stored), by agent kind and outcome",
            ["agent", "outcome"],
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "agentbus_run_duration_seconds",
            "duration of ended runs (the terminal event's stats), by agent kind",
            ["agent"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.run_cost = Counter(
            "agentbus_run_cost_usd",
            "cost of ended runs, USD, by agent kind",
            ["agent"],
            registry=self.registry,
        )
        self.requests = Histogram(
            "agentbus_gateway_http_request_duration_seconds",
            "HTTP requests by route template, method and status: latency (and, as _count, how many)",
            ["route", "method", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.consumers = ConsumerWatch(
            lambda: bus.js if bus.connected else None,
            lambda: [(subjects.EVENTS_STREAM, subjects.GATEWAY_EVENTS_CONSUMER)],
        )
        self.registry.register(Scraped(self._live))

    def watch(
        self, hub: Hub, ingest: EventIngest, reaper: Reaper, deliveries: Deliveries | None = None
    ) -> None:
        """The pieces whose counters are read at scrape time."""
        self.hub, self.ingest, self.reaper, self.deliveries = hub, ingest, reaper, deliveries

    def stored(self, batch: Batch) -> None:
        """Events just stored (before the ingest's `on_stored`): runs that ended are counted, once
        across gateway copies (each event is stored by one copy)."""
        for event, _ in batch:
            outcome = event.__struct_config__.tag
            if outcome not in TERMINAL_EVENT_TYPES:
                continue
            stats = getattr(getattr(event, "data", None), "stats", None)
            agent = (stats.agent if stats is not None else None) or "unknown"
            self.runs_ended.labels(agent, outcome).inc()
            if stats is not None:
                self.run_duration.labels(agent).observe(stats.duration)
                if stats.cost_usd:
                    self.run_cost.labels(agent).inc(stats.cost_usd)

    def middleware(self, app: Any) -> RequestMetrics:
        return RequestMetrics(app, self.requests)

    async def render(self) -> bytes:
        await self.consumers.refresh()
        return render(self.registry)

    def _live(self) -> Iterator[Metric]:
        if self.hub is None or self.ingest is None or self.reaper is None:
            return
        stats = self.hub.stats
        yield _gauge("agentbus_gateway_streams_open", "WebSocket and SSE streams open", "kind", stats.open)
        yield _counter(
            "agentbus_gateway_stream_frames",
            "frames sent to stream clients (heartbeats too)",
            "kind",
            stats.frames,
        )
        yield _counter(
            "agentbus_gateway_stream_clients_cut_off",
            "stream clients closed by the gateway (too slow, shutting down, credential revoked)",
            "reason",
            stats.cut_off,
        )
        ingest = self.ingest
        yield CounterMetricFamily(
            "agentbus_gateway_events_ingested", "run events stored", value=ingest.stored
        )
        yield GaugeMetricFamily(
            "agentbus_gateway_ingest_lag_seconds",
            "age of the newest event of the last stored batch when it was committed",
            value=ingest.lag_s,
        )
        yield CounterMetricFamily(
            "agentbus_gateway_event_decode_failures",
            "run events that did not decode",
            value=ingest.decode_failures,
        )
        conflicts = sum(ingest.conflicts.counts.values())
        dead = {
            "undecodable": ingest.decode_failures,
            "unstorable": ingest.dead_letters - ingest.decode_failures,
            "conflict": conflicts,
        }
        yield _counter("agentbus_gateway_dead_letters", "events sent to events.dead, by why", "reason", dead)
        yield _counter(
            "agentbus_gateway_reaper_actions",
            "reaper actions (decisions redelivered, deadline wakes, runs reaped)",
            "action",
            self.reaper.actions,
        )
        if self.deliveries is not None:
            yield _counter(
                "agentbus_gateway_webhook_deliveries",
                "webhook delivery attempts by outcome: delivered (a 2xx), retried (another answer or "
                "none; tried again later), failed (the last attempt failed: given up)",
                "outcome",
                self.deliveries.counts,
            )
        yield from pool_metrics(self.store.engine)
        yield from self.consumers.metrics()


def _gauge(name: str, doc: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    out = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        out.add_metric([key], value)
    return out


def _counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    out = CounterMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        out.add_metric([key], value)
    return out


@get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics (text exposition); the viewer role when authentication is on",
    media_type="text/plain",
    responses=documented(),  # 401 and 403: the viewer role when authentication is on
    opt=needs("viewer"),
)
async def prometheus_metrics(exposition: Exposition) -> Response[bytes]:
    return Response(await exposition.render(), media_type=CONTENT_TYPE)

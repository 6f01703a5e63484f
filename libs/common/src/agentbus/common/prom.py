"""Prometheus metrics shared by the services: the JetStream consumers' backlog, the exposition, and
the small HTTP server the runner and the metrics service answer `/metrics`, `/healthz` and
`/readyz` on.

Every service keeps its metrics in a `CollectorRegistry` of its own (no process-global registry).
Values that already live in the service's objects (counters kept as plain integers, open streams,
runs held) are read at scrape time by a collector; nothing is done for them on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ConsumerWatch", "OpsServer", "Scraped", "new_registry", "render"]

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def new_registry() -> CollectorRegistry:
    """A service's own registry. Counters and histograms get no `_created` series (one family per
    metric: what `docs/operations.md` lists)."""
    disable_created_metrics()
    return CollectorRegistry(auto_describe=False)


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def pool_metrics(engine: Any) -> Iterator[Metric]:
    """The gauges of a SQLAlchemy engine's pool: connections checked out, and its size (0 for a
    pool that keeps none, like SQLite's)."""
    pool = getattr(engine, "pool", None)
    checked_out = getattr(pool, "checkedout", None)
    size = getattr(pool, "size", None)
    in_use = GaugeMetricFamily(
        "agentbus_db_pool_connections_in_use", "database connections checked out of the pool"
    )
    in_use.add_metric([], checked_out() if callable(checked_out) else 0)
    yield in_use
    pool_size = GaugeMetricFamily("agentbus_db_pool_size", "connections the database pool keeps")
    pool_size.add_metric([], size() if callable(size) else 0)
    yield pool_size


class Scraped(Collector):
    """A collector whose metrics a function builds at scrape time."""

    def __init__(self, build: Callable[[], Iterable[Metric]]) -> None:
        self.build = build

    def collect(self) -> Iterator[Metric]:
        yield from self.build()

    def describe(self) -> list[Metric]:
        return []  # built at scrape time: nothing to check at registration


class ConsumerWatch:
    """The backlog of JetStream consumers, asked of the broker (`consumer_info`) once per scrape.

    `consumers` gives the (stream, durable) pairs to ask about; `js` the JetStream context (None
    while not connected). The last answers are kept: a consumer the broker did not answer for is
    left out of the next exposition rather than shown stale."""

    def __init__(
        self, js: Callable[[], Any], consumers: Callable[[], Iterable[tuple[str, str]]], timeout: float = 0.5
    ) -> None:
        self.js = js
        self.consumers = consumers
        self.timeout = timeout
        self.last: dict[tuple[str, str], tuple[int, int]] = {}  # (stream, consumer) -> pending, ack pending

    async def refresh(self) -> None:
        js = self.js()
        if js is None:
            self.last = {}
            return
        pairs = list(self.consumers())

        async def one(stream: str, name: str) -> tuple[int, int] | None:
            try:
                info = await asyncio.wait_for(js.consumer_info(stream, name), self.timeout)
            except Exception as exc:  # gone, not made yet, or the broker is slow: left out
                log.debug("consumer_info %s/%s: %r", stream, name, exc)
                return None
            return int(info.num_pending or 0), int(info.num_ack_pending or 0)

        answers = await asyncio.gather(*(one(s, n) for s, n in pairs))
        self.last = {pair: got for pair, got in zip(pairs, answers, strict=True) if got is not None}

    def metrics(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "agentbus_consumer_pending_messages",
            "JetStream messages not yet delivered to the consumer",
            labels=["stream", "consumer"],
        )
        acks = GaugeMetricFamily(
            "agentbus_consumer_ack_pending_messages",
            "JetStream messages delivered to the consumer and not yet acknowledged",
            labels=["stream", "consumer"],
        )
        for (stream, name), (waiting, unacked) in self.last.items():
            pending.add_metric([stream, name], waiting)
            acks.add_metric([stream, name], unacked)
        yield pending
        yield acks


class OpsServer:
    """`/metrics`, `/healthz` and `/readyz` on a port of the service's settings, with asyncio only.

    `/healthz` answers 200 while the process's loop runs. `/readyz` answers 200 when `ready()`
    says so, else 503. `/metrics` calls `before_scrape()` and renders the registry. Port 0 asks
    the system for a free port (`port` says which after `start`)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        ready: Callable[[], Awaitable[bool]],
        before_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.ready = ready
        self.before_scrape = before_scrape
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("metrics and probes on http://%s:%d (/metrics, /healthz, /readyz)", self.host, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0].decode("latin-1")
            status, ctype, body = await self._answer(method.decode("latin-1"), path)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + (body if method != b"HEAD" else b"")
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            try:
                ok = await asyncio.wait_for(self.ready(), 2)
            except Exception:
                ok = False
            return (
                ("200 OK", "text/plain", b"ready\n")
                if ok
                else ("503 Service Unavailable", "text/plain", b"not ready\n")
            )
        if path == "/metrics":
            if self.before_scrape is not None:
                with contextlib.suppress(Exception):
                    await self.before_scrape()
            return "200 OK", CONTENT_TYPE, render(self.registry)
        return "404 Not Found", "text/plain", b"not found\n"

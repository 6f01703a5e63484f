"""The metrics service's `/metrics`, `/healthz` and `/readyz` (`METRICS_METRICS_PORT`; 0, the
default: off).

Read at scrape time: its consumers' backlog (`consumer_info`, once per scrape) and its database
pool. Ready: connected to NATS, its request handlers and both consumers started, and the database
answering a `SELECT 1`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client.core import Metric
from sqlalchemy import text

from agentbus.common.prom import ConsumerWatch, OpsServer, Scraped, new_registry, pool_metrics
from agentbus.contracts import subjects
from agentbus.metrics.service import MetricsService

CONSUMERS = (
    (subjects.EVENTS_STREAM, subjects.METRICS_EVENTS_CONSUMER),
    (subjects.LIFECYCLE_STREAM, subjects.METRICS_LIFECYCLE_CONSUMER),
)


class MetricsOps:
    def __init__(self, service: MetricsService) -> None:
        self.service = service
        self.registry = new_registry()
        self.consumers = ConsumerWatch(
            lambda: service.nc.jetstream() if self._connected() else None, lambda: CONSUMERS
        )
        self.registry.register(Scraped(self._live))
        s = service.settings
        self.server = OpsServer(
            self.registry, s.metrics_host, s.metrics_port, self.ready, self.consumers.refresh
        )

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def _connected(self) -> bool:
        nc = self.service.nc
        return nc is not None and nc.is_connected

    async def ready(self) -> bool:
        engine = self.service.engine
        if not (self._connected() and self.service.running and engine is not None):
            return False
        try:
            async with asyncio.timeout(1):
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    def _live(self) -> Iterator[Metric]:
        yield from pool_metrics(self.service.engine)
        yield from self.consumers.metrics()

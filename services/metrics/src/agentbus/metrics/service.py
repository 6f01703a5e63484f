"""The metrics service as an object, so `__main__` and the tests start it the same way."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from pathlib import Path

from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.common.bus import connect_with_retry, ensure_streams
from agentbus.common.db import make_engine, migrate, wait_for_database
from agentbus.metrics import __version__, sketches
from agentbus.metrics.consumers import EventsConsumer, LifecycleConsumer
from agentbus.metrics.handlers import RequestHandlers
from agentbus.metrics.retention import Upkeep
from agentbus.metrics.settings import Settings
from agentbus.metrics.store import MetricsStore

log = logging.getLogger(__name__)

MIGRATIONS = str(Path(__file__).parent / "migrations")
VERSION_TABLE = "alembic_version_metrics"


async def migrate_with_retry(engine: AsyncEngine, attempts: int = 5) -> None:
    """Copies started together on one SQLite file race to create the tables (SQLite runs DDL
    outside the transaction, and only PostgreSQL gets an advisory lock): the loser retries
    and finds the schema at head."""
    for attempt in range(1, attempts + 1):
        try:
            await migrate(engine, MIGRATIONS, VERSION_TABLE)
            return
        except Exception as exc:
            if attempt == attempts:
                raise
            log.info("migration attempt %d failed (%s), retrying", attempt, type(exc).__name__)
            await asyncio.sleep(0.5 * attempt)


class MetricsService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self.nc: Client | None = None
        self._parts: list[EventsConsumer | LifecycleConsumer | RequestHandlers] = []
        self._upkeep: Upkeep | None = None

    async def start(self) -> None:
        s = self.settings
        log.info("metrics %s (%s) starting, database %s", __version__, s.instance, s.database_url_redacted)
        self.engine = make_engine(s.database_url, pool_size=s.db_pool_size)
        sketches.register(self.engine)
        await wait_for_database(self.engine)
        await migrate_with_retry(self.engine)
        self.nc = await connect_with_retry(s.nats_url, f"metrics-{s.instance}", "metrics", s.nats)
        js = self.nc.jetstream()
        await ensure_streams(js, replicas=s.nats_replicas)
        store = MetricsStore(self.engine, retention_days=s.retention_days)
        # Answer requests first: the stored backlog may take a while to consume.
        for part in (
            RequestHandlers(self.nc, store, s.instance),
            LifecycleConsumer(self.nc, js, store),
            EventsConsumer(self.nc, js, store),
        ):
            await part.start()
            self._parts.append(part)
        self._upkeep = Upkeep(self.engine, s.retention_days, s.upkeep_interval_s)
        await self._upkeep.start()
        log.info("metrics ready")

    @property
    def running(self) -> bool:
        """Started: its request handlers and both consumers are up."""
        return {type(part) for part in self._parts} >= {RequestHandlers, LifecycleConsumer, EventsConsumer}

    async def stop(self) -> None:
        """Stop taking messages, finish (and ack) what was received, then close; safe after a failed start."""
        if self._upkeep is not None:
            await self._upkeep.stop()
        for part in reversed(self._parts):
            with suppress(Exception):
                await part.stop()
        self._parts.clear()
        if self.nc is not None and not self.nc.is_closed:
            with suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 10)  # flushes the last acks and replies
            with suppress(Exception):
                await self.nc.close()
        if self.engine is not None:
            await self.engine.dispose()
        log.info("metrics stopped")

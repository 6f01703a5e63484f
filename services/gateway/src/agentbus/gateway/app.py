"""`create_app()`: routes, error handlers and the lifespan (database, NATS, event ingest, fan-out)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.exceptions import LitestarDeprecationWarning
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin

from agentbus.common.db import make_engine, migrate, redact, wait_for_database
from agentbus.common.writer import Writer
from agentbus.gateway import __version__, reads
from agentbus.gateway.agents import AgentController, Discovery
from agentbus.gateway.auth import token_middleware
from agentbus.gateway.bus import Bus
from agentbus.gateway.errors import EXCEPTION_HANDLERS, unexpected
from agentbus.gateway.events.hub import Hub
from agentbus.gateway.events.ingest import EventIngest
from agentbus.gateway.health import MetricsController, all_stream, health, ready, run_stream, task_stream
from agentbus.gateway.reaper import Reaper
from agentbus.gateway.runs import RunController
from agentbus.gateway.settings import Settings
from agentbus.gateway.sse import run_event_stream
from agentbus.gateway.tasks import TaskController

log = logging.getLogger(__name__)
MIGRATIONS = str(Path(__file__).parent / "migrations")


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    # Litestar 2.2x warns about parameter styles that remain supported throughout 2.x.
    warnings.filterwarnings("ignore", category=LitestarDeprecationWarning)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Hot writes have their own pool (the writer's) and so do primary-key reads and the event
        # ingest on PostgreSQL: this one serves lists, logs and the rarer writes.
        engine = make_engine(settings.database_url, pool_size=6)
        log.info("database %s", redact(str(engine.url)))
        await wait_for_database(engine)
        await migrate(engine, MIGRATIONS, "alembic_version_gateway")
        bus = await Bus.open(
            settings.nats_url,
            f"gateway-{settings.instance}",
            settings.nats_replicas,
            settings.request_timeout_s,
        )
        hub = Hub(engine, settings.ws_heartbeat_s, settings.ws_queue_size)
        await hub.start(bus.nc)
        writer = Writer(engine)  # every hot write of this process (SQLite: one thread, one connection)
        ingest = EventIngest(engine, bus, settings.ingest_batch, writer)
        await ingest.start()
        reaper = Reaper(engine, bus, settings.reaper_after_s, settings.reaper_interval_s, settings.instance)
        await reaper.start()
        discovery = Discovery(bus.nc)
        app.state.update(
            settings=settings,
            engine=engine,
            writer=writer,
            bus=bus,
            hub=hub,
            ingest=ingest,
            reaper=reaper,
            discovery=discovery,
        )
        try:
            yield
        finally:
            await reaper.stop()
            await hub.stop()
            await ingest.stop()
            await writer.close()
            await bus.close()
            await reads.dispose(engine)
            await engine.dispose()

    middleware = [token_middleware(settings.api_token)] if settings.api_token else []
    return Litestar(
        route_handlers=[
            TaskController,
            RunController,
            AgentController,
            MetricsController,
            health,
            ready,
            run_stream,
            task_stream,
            all_stream,
            run_event_stream,
        ],
        lifespan=[lifespan],
        exception_handlers={**EXCEPTION_HANDLERS, Exception: unexpected},
        middleware=middleware,
        request_max_body_size=settings.max_body_bytes,
        cors_config=CORSConfig(allow_origins=["*"]) if not settings.api_token else None,
        openapi_config=OpenAPIConfig(
            title="agentbus",
            version=__version__,
            description="Background AI-agent runs with a human approval step.",
            path="/",
            render_plugins=[SwaggerRenderPlugin(path="/docs"), RedocRenderPlugin(path="/redoc")],
        ),
        debug=False,
        logging_config=None,  # the service's own logging (agentbus.common.logs) applies
    )

"""`create_app()`: the gateway's pieces, built once and wired together, and the app that serves them.

`Gateway` builds every piece from the settings (nothing connects yet), hands them to each other
by explicit callbacks, and to route handlers by dependency injection; the app's lifespan starts
them in order and stops them in reverse. What is served (`Gateway.asgi`) is the Litestar app
behind the checks of `guard.py`, which run before routing.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.exceptions import LitestarDeprecationWarning, MethodNotAllowedException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin

from agentbus.contracts import subjects
from agentbus.gateway import __version__
from agentbus.gateway.agents import AgentController, Discovery
from agentbus.gateway.auth import token_middleware
from agentbus.gateway.bus import Bus
from agentbus.gateway.errors import EXCEPTION_HANDLERS, GatewayRequest, unexpected
from agentbus.gateway.guard import Guard, Methods, MethodTable
from agentbus.gateway.health import health, ready
from agentbus.gateway.ingest import EventIngest
from agentbus.gateway.lifecycle import Lifecycle
from agentbus.gateway.metrics import MetricsController
from agentbus.gateway.reaper import Reaper
from agentbus.gateway.runs import RunController, RunService
from agentbus.gateway.settings import Settings
from agentbus.gateway.store import MIGRATIONS, GatewayStore
from agentbus.gateway.streams.hub import Hub
from agentbus.gateway.streams.routes import all_stream, run_stream, task_stream
from agentbus.gateway.streams.sse import run_event_stream
from agentbus.gateway.tasks import TaskController, TaskService

__all__ = ["MIGRATIONS", "Gateway", "create_app"]


def _provide(value: Any) -> Provide:
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


class Gateway:
    """Every piece of one gateway process, and the app that serves them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        origin = uuid.uuid4().hex  # marks this process's live announcements (its hub skips them)
        self.store = GatewayStore(s.database_url, s.db_pool_size, s.db_read_connections)
        self.bus = Bus(s.nats_url, f"gateway-{s.instance}", s.nats_replicas, s.request_timeout_s, s.nats)
        self.hub = Hub(self.store, s.ws_heartbeat_s, s.ws_queue_size, origin)
        self.ingest = EventIngest(
            self.store, self.bus, on_stored=self.hub.deliver, origin=origin, batch=s.ingest_batch
        )
        self.reaper = Reaper(self.store, self.bus, s.reaper_after_s, s.reaper_interval_s, s.instance)
        self.discovery = Discovery(self.bus)
        self.lifecycle = Lifecycle(
            self.store, self.bus, self.hub.wait_ended, s.delete_wait_s, s.cancel_wait_s
        )
        self.tasks = TaskService(self.store, self.lifecycle, s.default_agent)
        self.runs = RunService(self.store, self.bus, self.discovery, self.lifecycle, self.tasks)
        self.app = self._app()
        self.methods = MethodTable(self.app)
        self.asgi = Guard(Methods(self.app, self.methods), s.served_hosts(), s.cors_origins)

    def _not_allowed(self, request: Request, exc: MethodNotAllowedException) -> Response:
        """The router's 405, with `Allow` naming the path's methods."""
        allow = self.methods.allow_header(request.url.path)
        body = {"status_code": 405, "detail": f"{request.method} is not allowed here"}
        return Response(body, status_code=405, headers={"Allow": allow} if allow else None)

    @asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        await self.store.open()
        try:
            await self.bus.open()
            await self.hub.start(self.bus.nc, subjects.EVENTS_LIVE_ALL)
            await self.ingest.start()
            await self.reaper.start()
            yield
        finally:
            await self.reaper.stop()
            await self.hub.stop()
            await self.ingest.stop()
            await self.bus.close()
            await self.store.close()

    def _app(self) -> Litestar:
        s = self.settings
        # Litestar 2.2x warns about parameter styles that remain supported throughout 2.x.
        warnings.filterwarnings("ignore", category=LitestarDeprecationWarning)
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
            dependencies={
                "settings": _provide(s),
                "store": _provide(self.store),
                "bus": _provide(self.bus),
                "hub": _provide(self.hub),
                "discovery": _provide(self.discovery),
                "lifecycle": _provide(self.lifecycle),
                "task_service": _provide(self.tasks),
                "run_service": _provide(self.runs),
            },
            lifespan=[self.lifespan],
            exception_handlers={
                **EXCEPTION_HANDLERS,
                MethodNotAllowedException: self._not_allowed,
                Exception: unexpected,
            },
            request_class=GatewayRequest,
            middleware=[token_middleware(s.api_token)] if s.api_token else [],
            request_max_body_size=s.max_body_bytes,
            cors_config=_cors(s.cors_origins),
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


def _cors(origins: tuple[str, ...]) -> CORSConfig | None:
    """CORS headers for the listed origins only (none by default: no page reads the gateway)."""
    if not origins:
        return None
    return CORSConfig(
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "PATCH", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Range"],
        expose_headers=["Content-Range", "Content-Disposition", "Retry-After"],
    )


def create_app(settings: Settings | None = None) -> Any:
    """The gateway as an ASGI app (what uvicorn serves)."""
    return Gateway(settings or Settings.from_env()).asgi

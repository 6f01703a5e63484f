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
from litestar.openapi.spec import Components, SecurityScheme

from agentbus.contracts import subjects
from agentbus.gateway import __version__
from agentbus.gateway.access import Access
from agentbus.gateway.admission import Admission
from agentbus.gateway.agents import AgentController, Discovery
from agentbus.gateway.approvals import ApprovalController, ApprovalService
from agentbus.gateway.bus import Bus
from agentbus.gateway.dashboard import PageHeaders, render_plugins, static_files
from agentbus.gateway.deliveries import Deliveries
from agentbus.gateway.errors import EXCEPTION_HANDLERS, GatewayRequest, declare_error_headers, unexpected
from agentbus.gateway.exposition import Exposition, prometheus_metrics
from agentbus.gateway.guard import Guard, Methods, MethodTable
from agentbus.gateway.health import health, ready
from agentbus.gateway.identity import Authenticator
from agentbus.gateway.ingest import EventIngest
from agentbus.gateway.lifecycle import Lifecycle
from agentbus.gateway.metrics import MetricsController
from agentbus.gateway.people import AuditController, KeyController, me
from agentbus.gateway.reaper import Reaper
from agentbus.gateway.runs import RunController, RunService
from agentbus.gateway.settings import Settings
from agentbus.gateway.store import MIGRATIONS, GatewayStore
from agentbus.gateway.store.effects import Batch
from agentbus.gateway.streams.credentials import CredentialWatch
from agentbus.gateway.streams.hub import Hub
from agentbus.gateway.streams.routes import all_stream, run_stream, task_stream
from agentbus.gateway.streams.sse import QUERY_TOKEN, run_event_stream
from agentbus.gateway.tasks import TaskController, TaskService
from agentbus.gateway.webhooks import WebhookController

__all__ = ["MIGRATIONS", "Gateway", "create_app"]


SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": SecurityScheme(
        type="http",
        scheme="bearer",
        description="An API key (`ab_...`), the admin token, or a JWT; streams also take `?token=`. "
        "Roles: viewer (every GET, every stream), operator (+ create, update, delete tasks and runs, "
        "cancel runs), approver (+ approve and reject), admin (everything, keys, webhooks and the audit "
        "trail).",
    ),
    # Streams only (the SSE route names it; WebSockets are not in the document): a browser's
    # EventSource and WebSocket cannot set headers. A URL is logged by proxies and kept in history,
    # so every other route refuses it (401).
    QUERY_TOKEN: SecurityScheme(
        type="apiKey",
        name="token",
        security_scheme_in="query",
        description="The same credential as `bearer`, as `?token=`: on streams only (the SSE route "
        "here, and the WebSockets `/ws/...`). Checked again about every second while the stream is "
        "open: revoked or expired, it ends the stream.",
    ),
}


def _provide(value: Any) -> Provide:
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


class Gateway:
    """Every piece of one gateway process, and the app that serves them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        origin = uuid.uuid4().hex  # marks this process's live announcements (its hub skips them)
        self.store = GatewayStore(s.database_url, s.db_pool_size, s.db_read_connections)
        self.authenticator = Authenticator(s, self.store.api_key)
        self.access = Access(s, self.authenticator, self.store.people)
        self.bus = Bus(s.nats_url, f"gateway-{s.instance}", s.nats_replicas, s.request_timeout_s, s.nats)
        self.exposition = Exposition(self.store, self.bus)  # /metrics: what is counted, and read
        self.admission = Admission(self.store, self.bus)  # runs over a task's max_concurrent_runs
        self.hub = Hub(
            self.store,
            s.ws_heartbeat_s,
            s.ws_queue_size,
            origin,
            on_frames=self.admission.stored,
            credentials=CredentialWatch(self.authenticator),  # open streams keep proving who they are
        )
        self.deliveries = Deliveries(
            self.store,
            s.webhook_timeout_s,
            s.webhook_max_attempts,
            s.webhook_backoff_s,
            s.webhook_backoff_max_s,
            s.webhook_poll_s,
            s.webhook_keep_days,
        )
        self.ingest = EventIngest(
            self.store,
            self.bus,
            on_stored=self._stored,
            origin=origin,
            batch=s.ingest_batch,
            on_deliveries=self.deliveries.nudge,
        )
        self.reaper = Reaper(
            self.store,
            self.bus,
            s.reaper_after_s,
            s.reaper_interval_s,
            s.instance,
            on_round=self.admission.sweep,
        )
        self.discovery = Discovery(self.bus)
        self.lifecycle = Lifecycle(
            self.store,
            self.bus,
            self.hub.wait_ended,
            s.delete_wait_s,
            s.cancel_wait_s,
            queue_held=self.admission.queue_cancelled,
        )
        self.tasks = TaskService(
            self.store, self.lifecycle, s.default_agent, limit_changed=self.admission.limit_changed
        )
        self.approvals = ApprovalService(self.store)
        self.runs = RunService(
            self.store,
            self.bus,
            self.discovery,
            self.lifecycle,
            self.tasks,
            watch=self.admission.watch,
            refused=self.access.refused,
        )
        self.exposition.watch(self.hub, self.ingest, self.reaper, self.deliveries)
        self.app = self._app()
        self.methods = MethodTable(self.app)
        guarded = Guard(Methods(PageHeaders(self.app), self.methods), s.served_hosts(), s.cors_origins)
        self.asgi = self.exposition.middleware(guarded)  # outermost: every request is counted

    def _stored(self, batch: Batch) -> None:
        """The ingest's `on_stored`: runs that ended are counted, then the hub fans the events out."""
        self.exposition.stored(batch)
        self.hub.deliver(batch)

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
            await self.admission.start()  # what is held, before any event is stored
            await self.hub.start(self.bus.nc, subjects.EVENTS_LIVE_ALL)
            await self.ingest.start()
            await self.reaper.start()
            await self.deliveries.start()  # pending deliveries of earlier lives are sent too
            yield
        finally:
            await self.deliveries.stop()
            await self.reaper.stop()
            await self.hub.stop()
            await self.ingest.stop()
            await self.admission.stop()  # after the last event in: no release starts after it
            await self.bus.close()
            await self.store.close()

    def _app(self) -> Litestar:
        s = self.settings
        # Litestar 2.2x warns about parameter styles that remain supported throughout 2.x.
        warnings.filterwarnings("ignore", category=LitestarDeprecationWarning)
        app = Litestar(
            route_handlers=[
                TaskController,
                RunController,
                ApprovalController,
                AgentController,
                MetricsController,
                health,
                ready,
                prometheus_metrics,
                run_stream,
                task_stream,
                all_stream,
                run_event_stream,
                KeyController,
                AuditController,
                WebhookController,
                me,
                static_files(),
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
                "approval_service": _provide(self.approvals),
                "authenticator": _provide(self.authenticator),
                "access": _provide(self.access),
                "exposition": _provide(self.exposition),
            },
            middleware=[self.access.middleware],
            lifespan=[self.lifespan],
            exception_handlers={
                **EXCEPTION_HANDLERS,
                MethodNotAllowedException: self._not_allowed,
                Exception: unexpected,
            },
            request_class=GatewayRequest,
            request_max_body_size=s.max_body_bytes,
            cors_config=_cors(s.cors_origins),
            openapi_config=OpenAPIConfig(
                title="agentbus",
                version=__version__,
                description="Background AI-agent runs with a human approval step.",
                path="/",
                render_plugins=render_plugins(),  # the dashboard at `/`, /docs and /redoc
                components=Components(security_schemes=SECURITY_SCHEMES),
                security=[{"bearer": []}],
            ),
            debug=False,
            logging_config=None,  # the service's own logging (agentbus.common.logs) applies
        )
        # Every route is registered: the document is built now (what `/openapi.json` serves), with
        # the headers its error responses come with.
        declare_error_headers(app.openapi_schema)
        return app


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

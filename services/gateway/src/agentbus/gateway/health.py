"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from litestar import Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Operation

from agentbus.contracts import subjects
from agentbus.gateway import __version__
from agentbus.gateway.bus import Bus
from agentbus.gateway.schemas import NotReady, Ready
from agentbus.gateway.store import GatewayStore


class Open(Operation):
    """An operation that needs no credentials (OpenAPI: `security: []`)."""

    def to_schema(self) -> dict[str, Any]:
        out = super().to_schema()
        out["security"] = []
        return out


@get("/health", tags=["health"], summary="Alive", operation_class=Open)
async def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__, "timestamp": datetime.now(UTC).isoformat()}


@get(
    "/ready",
    tags=["health"],
    summary="Ready: broker (with the streams and consumer the gateway needs), database, a runner and "
    "the metrics service answer",
    operation_class=Open,
    responses={
        200: ResponseSpec(Ready, description="ready", generate_examples=False),
        503: ResponseSpec(
            NotReady, description="not ready: `checks` names what does not answer", generate_examples=False
        ),
    },
)
async def ready(store: GatewayStore, bus: Bus) -> Response[dict[str, object]]:
    db, runner, metrics, missing_assets = await asyncio.gather(
        store.ping(),
        bus.ping(subjects.RUN_PING),
        bus.ping(subjects.METRICS_PING),
        bus.missing_assets(),
    )
    checks = {
        "broker": bus.connected and not missing_assets,
        "database": db,
        "runner": runner is not None,
        "metrics": metrics is not None,
    }
    missing = [name for name, ok in checks.items() if not ok]
    if missing:
        detail = "not ready: " + ", ".join(missing) + " unavailable"
        if missing_assets:
            detail += " (missing on the broker: " + ", ".join(missing_assets) + ")"
        body = {"status_code": 503, "detail": detail, "checks": checks}
        return Response(body, status_code=503)
    return Response({"status": "ready", "checks": checks}, status_code=200)

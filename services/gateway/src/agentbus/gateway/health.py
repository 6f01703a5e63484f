"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

from litestar import Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Operation

from agentbus.contracts import subjects
from agentbus.gateway import __version__
from agentbus.gateway.bus import Bus
from agentbus.gateway.schemas import NotReady, Ready
from agentbus.gateway.store import GatewayStore

T = TypeVar("T")


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
    (db, t_db), (runner, t_runner), (metrics, t_metrics), (missing_assets, t_broker) = await asyncio.gather(
        _timed(store.ping()),
        _timed(bus.ping(subjects.RUN_PING)),
        _timed(bus.ping(subjects.METRICS_PING)),
        _timed(bus.missing_assets()),
    )
    timings = {"broker": t_broker, "database": t_db, "runner": t_runner, "metrics": t_metrics}
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
        body = {"status_code": 503, "detail": detail, "checks": checks, "timings": timings}
        return Response(body, status_code=503)
    return Response({"status": "ready", "checks": checks, "timings": timings}, status_code=200)


async def _timed(check: Awaitable[T]) -> tuple[T, float]:
    """A check's answer and the milliseconds it took."""
    start = time.perf_counter()
    answer = await check
    return answer, round((time.perf_counter() - start) * 1000, 3)

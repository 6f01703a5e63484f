"""Bearer-token check, on when AGENTBUS_API_TOKEN is set (required to listen beyond loopback)."""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import parse_qs

OPEN_PATHS = frozenset({"/health", "/ready", "/health/", "/ready/"})


def token_middleware(token: str) -> Any:
    expected = token.encode()

    def factory(app: Any) -> Any:
        async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
                await app(scope, receive, send)
                return
            given = b""
            for name, value in scope.get("headers", ()):
                if name == b"authorization" and value.lower().startswith(b"bearer "):
                    given = value[7:].strip()
            if not given and scope["type"] == "websocket":
                # Browsers cannot set headers on a WebSocket: accept ?token= there.
                values = parse_qs(scope.get("query_string", b"").decode()).get("token")
                given = values[0].encode() if values else b""
            if hmac.compare_digest(given, expected):
                await app(scope, receive, send)
                return
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4401, "reason": "unauthorized"})
                return
            body = json.dumps({"status_code": 401, "detail": "missing or wrong bearer token"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                }
            )
            await send({"type": "http.response.body", "body": body})

        return middleware

    return factory

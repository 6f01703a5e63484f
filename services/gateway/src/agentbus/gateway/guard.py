"""What every request passes before it reaches a route: the checks that keep web pages from driving
a gateway on a user's machine, and the HTTP methods of a path.

A page in a browser can send a request to `127.0.0.1:8000` (a form, `fetch` in `no-cors` mode, a
WebSocket) or, by DNS rebinding, make its own name point there. So, before routing:
- the `Host` a request names must be one the gateway serves (loopback names by default), which
  defeats DNS rebinding;
- a request that changes state (POST, PUT, PATCH, DELETE) and every WebSocket handshake that comes
  from a page (it carries `Origin`) must come from the gateway's own origin or one listed in
  `GATEWAY_CORS_ORIGINS`: browsers always send `Origin` on those, and a page cannot forge it;
- a body is JSON only when it says `application/json` (a `text/plain` body needs no preflight).

The method table answers what the router does not: HEAD on a GET route (the GET's headers, no
body), OPTIONS naming every method of the path, and a 405 with `Allow`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from litestar import Litestar
from litestar.routes import HTTPRoute

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def send_error(
    scope: Scope, send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """The gateway's JSON error (`status_code`, `detail`); a WebSocket is refused at the handshake
    (close code 4000 + status, which the server answers as HTTP 403)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4000 + status, "reason": detail[:120]})
        return
    body = json.dumps({"status_code": status, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def host_name(host: str) -> str:
    """`Example.com:8000` -> `example.com`; `[::1]:8000` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """Host, Origin and content type, checked before routing (see the module's docstring).

    hosts: the host names served, or None for any. origins: the foreign origins allowed
    (`https://app.example:8443`); a request's own origin (same host and port as its `Host`) always is.
    """

    def __init__(self, app: ASGIApp, hosts: Iterable[str] | None, origins: Iterable[str]) -> None:
        self.app = app
        self.hosts = None if hosts is None else frozenset(h.lower() for h in hosts)
        self.origins = frozenset(o.lower().rstrip("/") for o in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = origin = content_type = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                has_body = value.strip() not in (b"0", b"")
            elif name == b"transfer-encoding":
                has_body = True
        if host is not None and self.hosts is not None and host_name(host) not in self.hosts:
            await send_error(
                scope,
                send,
                400,
                "this gateway does not serve that Host (GATEWAY_ALLOWED_HOSTS lists those it does)",
            )
            return
        if origin is not None and (kind == "websocket" or scope["method"] in WRITES):
            if not self._origin_allowed(origin, host):
                await send_error(
                    scope, send, 403, "requests from this origin are not allowed (see GATEWAY_CORS_ORIGINS)"
                )
                return
        if has_body and kind == "http" and not _is_json(content_type):
            await send_error(scope, send, 415, "send a body as JSON, with content-type application/json")
            return
        await self.app(scope, receive, send)

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins:
            return True
        scheme, sep, netloc = origin.partition("://")
        return bool(sep) and scheme in ("http", "https") and host is not None and netloc == host.lower()


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json"


_PARAM = re.compile(r"\{(\w+):(\w+)\}")
_PARAM_PATTERNS = {"path": ".*", "int": "-?[0-9]+"}


def _route_pattern(path: str) -> re.Pattern[str]:
    out, last = [], 0
    for match in _PARAM.finditer(path):
        out.append(re.escape(path[last : match.start()]))
        out.append(f"({_PARAM_PATTERNS.get(match.group(2), '[^/]+')})")
        last = match.end()
    out.append(re.escape(path[last:]))
    return re.compile("".join(out) + r"/?\Z")


class MethodTable:
    """The HTTP methods of each path of a Litestar app, HEAD and OPTIONS included."""

    def __init__(self, app: Litestar) -> None:
        table: list[tuple[int, re.Pattern[str], frozenset[str]]] = []
        for route in app.routes:
            if isinstance(route, HTTPRoute):
                methods = set(route.methods) | {"OPTIONS"}
                if "GET" in methods:
                    methods.add("HEAD")
                table.append((route.path.count("{"), _route_pattern(route.path), frozenset(methods)))
        table.sort(key=lambda row: row[0])  # a static path wins over a parameter, as in the router
        self.table = table

    def allowed(self, path: str) -> frozenset[str] | None:
        for _, pattern, methods in self.table:
            if pattern.match(path):
                return methods
        return None

    def allow_header(self, path: str) -> str | None:
        """`Allow` for a path: its methods, or None for a path the app does not serve."""
        methods = self.allowed(path)
        return None if methods is None else ", ".join(sorted(methods))


class Methods:
    """HEAD and OPTIONS for the routes of a Litestar app (see the module's docstring); other
    methods pass untouched (a 405 from the router gets its `Allow` in the app's exception handler).
    CORS preflights (OPTIONS with `Access-Control-Request-Method`) go to the app, which answers
    them for the origins it was configured with."""

    def __init__(self, app: ASGIApp, table: MethodTable) -> None:
        self.app = app
        self.table = table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        methods = self.table.allowed(scope["path"])
        if methods is None:  # the app's 404
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            if any(name == b"access-control-request-method" for name, _ in scope["headers"]):
                await self.app(scope, receive, send)
                return
            allow = (b"allow", ", ".join(sorted(methods)).encode())
            await send({"type": "http.response.start", "status": 204, "headers": [allow]})
            await send({"type": "http.response.body", "body": b""})
            return
        if "HEAD" in methods:
            await self._head(scope, receive, send)
            return
        await self.app(scope, receive, send)  # the router's 405

    async def _head(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The GET's status and headers without its body; a streaming GET is told the client left."""
        started = False

        async def receive_head() -> Message:
            if started:
                return {"type": "http.disconnect"}
            return await receive()

        async def send_head(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                await send(message)
                await send({"type": "http.response.body", "body": b""})
            # The body (and any trailing part of it) is not sent.

        await self.app({**scope, "method": "GET"}, receive_head, send_head)

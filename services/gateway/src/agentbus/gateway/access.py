"""Who may do what: authentication on every request, a role check on every route and stream, rate
limits per identity, and the `auth.denied` audit entries.

- `AccessMiddleware` reads the credential (the `Authorization` header; `?token=` on streams, where
  browsers cannot set headers) and puts the `Identity` it proves in `scope["user"]` (None and a
  reason in `scope["auth"]` when it proves none).
- `Access.authorize`, called by that middleware once the route is known, is every route and stream's
  check. Each handler names the role it needs in its `opt` (`needs("operator")`); one that names
  none needs `viewer` for a GET and `admin` otherwise, so a route added without thought is closed,
  not open. No identity: 401 (a WebSocket is accepted and closed with 4401, so a browser sees why);
  a role not allowed: 403 (4403).
- With authentication on, writes are rate limited per identity (a token bucket: 429 with
  `Retry-After`), and each identity may hold `GATEWAY_MAX_STREAMS` streams open on this gateway copy.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from litestar import WebSocket
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    NotAuthorizedException,
    PermissionDeniedException,
    TooManyRequestsException,
    WebSocketException,
)

from agentbus.gateway.identity import LOCAL, Authenticator, Denied, Identity, Role
from agentbus.gateway.settings import Settings
from agentbus.gateway.store.people import AuditEntry, People

log = logging.getLogger(__name__)

# Need no credentials and reveal no secret: probes, the API's description, and the dashboard's
# page (`/`) and files (`/ui/...`), which hold no data (`dashboard.py`).
OPEN_PATHS = r"^/$|^/(health|ready|openapi\.json|openapi\.yaml|openapi\.yml|docs|redoc|ui)(/.*)?$"
_OPEN = re.compile(OPEN_PATHS)
READS = frozenset({"GET", "HEAD"})
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429

# The roles allowed where a handler needs a role (admin may do everything).
ALLOWED: dict[str, frozenset[str]] = {
    "viewer": frozenset({"viewer", "operator", "approver", "admin"}),
    "operator": frozenset({"operator", "admin"}),
    "approver": frozenset({"approver", "admin"}),
    "admin": frozenset({"admin"}),
}


def needs(role: Role | None, *, query_token: bool = False) -> dict[str, Any]:
    """A handler's `opt`: the role it needs (None: any authenticated identity), and whether the
    credential may come as `?token=` (streams only: a URL is logged by proxies and kept in history)."""
    return {"role": role or "any", "query_token": query_token}


def credential_of(scope: Any) -> str | None:
    """The bearer credential of a request: its `Authorization` header, or on a stream `?token=`."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            if value[:7].lower() == b"bearer ":
                return value[7:].strip().decode("latin-1") or None
            break
    if scope["route_handler"].opt.get("query_token"):
        return ASGIConnection(scope).query_params.get("token") or None
    return None


class AccessMiddleware:
    """Puts the identity a request's credential proves in `scope["user"]` (None, with the reason in
    `scope["auth"]`, when it proves none), then lets `Access.authorize` decide. A plain ASGI
    middleware: it runs on every request, so it reads the header straight from the scope."""

    def __init__(self, app: Any, access: Access) -> None:
        self.app = app
        self.access = access
        self.authenticator = access.authenticator

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not _OPEN.match(scope["path"]):
            if not self.authenticator.on:
                scope["user"], scope["auth"] = LOCAL, None
            else:
                try:
                    scope["user"], scope["auth"] = (
                        await self.authenticator.identify(credential_of(scope)),
                        None,
                    )
                except Denied as exc:
                    scope["user"], scope["auth"] = None, str(exc)
            await self.access.authorize(scope, receive, send)
        await self.app(scope, receive, send)


class Access:
    def __init__(self, settings: Settings, authenticator: Authenticator, people: People) -> None:
        self.authenticator = authenticator
        self.people = people
        # With authentication off there is one identity, everyone's: a limit would cap the gateway,
        # not share it. The limits apply with authentication on.
        self.limited = settings.auth_on
        self.rate = settings.write_rate
        self.burst = float(settings.write_burst)
        self.max_streams = settings.max_streams
        self._buckets: dict[str, tuple[float, float]] = {}  # identity id -> (tokens, at)
        self._streams: dict[str, int] = {}
        self._denied = _DeniedLog(people, settings.denied_audit_per_minute)

    def middleware(self, app: Any) -> AccessMiddleware:
        """The authentication middleware around `app` (a Litestar middleware factory)."""
        return AccessMiddleware(app, self)

    async def authorize(self, scope: Any, receive: Any, send: Any) -> None:
        """Every route and stream's check, past routing (the handler's `opt` names its role); raises
        what Litestar answers (401, 403, 429; a WebSocket closed with 4401 or 4403). Done by the
        middleware rather than as a Litestar guard: a guard is handed a copy of the route handler
        on every call, about a tenth of a GET's time."""
        user: Identity | None = scope.get("user")
        method = scope.get("method", "GET")
        if user is None:
            reason = scope.get("auth") or "credentials required"
            await self._deny(scope, receive, send, 401, reason, None)
            return
        need = scope["route_handler"].opt.get("role") or ("viewer" if method in READS else "admin")
        if need != "any" and user.role not in ALLOWED[need]:
            why = f"the role {user.role} may not do this (needs {need})"
            await self._deny(scope, receive, send, 403, why, user)
        if self.limited and method not in READS and scope["type"] == "http":
            self._take(user.id)

    def _take(self, who: str) -> None:
        now = time.monotonic()
        tokens, at = self._buckets.get(who, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / self.rate)
            raise TooManyRequestsException(
                f"too many writes: at most {self.rate:g} per second (burst {self.burst:g}); retry later",
                headers={"Retry-After": str(wait)},
            )
        if len(self._buckets) >= 100_000:
            self._buckets.clear()
        self._buckets[who] = (tokens - 1, now)

    async def _deny(
        self, scope: Any, receive: Any, send: Any, status: int, reason: str, user: Identity | None
    ) -> None:
        if scope["type"] == "websocket":
            socket: WebSocket[Any, Any, Any] = WebSocket(scope, receive, send)
            await self._denied.record(socket, status, reason, user)
            # Accepted first: a browser only sees why when the close follows an open socket.
            await socket.accept()
            raise WebSocketException(
                detail=reason, code=CLOSE_UNAUTHORIZED if status == 401 else CLOSE_FORBIDDEN
            )
        await self._denied.record(ASGIConnection(scope, receive, send), status, reason, user)
        if status == 401:
            raise NotAuthorizedException(reason, headers={"WWW-Authenticate": "Bearer"})
        raise PermissionDeniedException(reason)

    @asynccontextmanager
    async def stream(self, user: Identity | None) -> AsyncIterator[bool]:
        """Hold one of the identity's stream slots while the block runs; yields False when it has
        none left (the caller refuses the stream)."""
        who = user.id if user is not None else "-"
        held = self._streams.get(who, 0)
        if self.limited and held >= self.max_streams:
            yield False
            return
        self._streams[who] = held + 1
        try:
            yield True
        finally:
            left = self._streams[who] - 1
            if left:
                self._streams[who] = left
            else:
                del self._streams[who]

    def stream_free(self, user: Identity | None) -> bool:
        return (
            not self.limited or self._streams.get(user.id if user is not None else "-", 0) < self.max_streams
        )

    def streams_refused(self) -> str:
        return f"too many open streams for this identity (at most {self.max_streams}); close one first"

    async def refused(
        self, connection: ASGIConnection[Any, Any, Any, Any], reason: str, user: Identity | None
    ) -> None:
        """The `auth.denied` entry of a 403 a handler decides past `authorize` (a task's `approvers`,
        the four-eyes rule: `RunService.may_decide`), in the same rate-limited log."""
        await self._denied.record(connection, 403, reason, user)


class _DeniedLog:
    """`auth.denied` entries, at most `per_minute` (a flood cannot fill the disk); the entries left
    out are counted in the next one written (`detail.suppressed`)."""

    def __init__(self, people: People, per_minute: int) -> None:
        self.people = people
        self.per_minute = per_minute
        self._window = 0
        self._written = 0
        self._suppressed = 0

    async def record(
        self, connection: ASGIConnection[Any, Any, Any, Any], status: int, reason: str, user: Identity | None
    ) -> None:
        window = int(time.monotonic() // 60)
        if window != self._window:
            self._window, self._written = window, 0
        if self._written >= self.per_minute:
            self._suppressed += 1
            return
        self._written += 1
        suppressed, self._suppressed = self._suppressed, 0
        client = connection.client.host if connection.client else None
        detail: dict[str, Any] = {
            "status": status,
            "reason": reason,
            "method": connection.scope.get("method", "WEBSOCKET"),
            "path": connection.scope["path"][:500],
            "client": client,
        }
        if suppressed:
            detail["suppressed"] = suppressed
        actor = user.actor() if user else {"id": "unknown", "name": "unknown", "role": None}
        entry = AuditEntry(
            datetime.now(UTC), actor, "auth.denied", "route", connection.scope["path"][:200], detail
        )
        try:
            await self.people.audit(entry)
        except Exception as exc:  # the database is away: the denial stands, the entry is lost
            log.warning("could not record auth.denied: %s", type(exc).__name__)

"""The web dashboard and the API documentation pages, every file served by the gateway itself.

- `/` is the dashboard's one HTML page; `/ui/...` its script, style and the vendored Swagger UI and
  Redoc bundles (`static/vendor/README.md`: versions and how to update them). No page loads anything
  from another origin, so they work offline and a CDN cannot change what runs on the gateway's origin.
- These files hold no data and no secret: they need no credentials (`access.OPEN_PATHS`) and are left
  out of the OpenAPI document. The page reads everything through the API, with the credential the
  user typed in (kept in the tab's sessionStorage, sent as `Authorization`; `?token=` only on the
  WebSocket, where browsers cannot set headers).
- `PageHeaders` gives those pages a Content-Security-Policy: the dashboard's allows only its own
  files (no inline script or style, no other origin); the documentation pages' allows the inline
  bootstrap script Litestar's render plugins write, and still nothing from another origin.

The OpenAPI router is mounted at the root (so `/docs`, `/redoc` and `/openapi.json` keep their
paths) and serves `/` with its default render plugin: the dashboard's page is that plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request
from litestar.openapi.plugins import OpenAPIRenderPlugin, RedocRenderPlugin, SwaggerRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router

from agentbus.gateway.guard import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
UI_PATH = "/ui"

DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Litestar's Swagger UI and Redoc pages start with an inline script holding the schema; Redoc runs
# its search in a worker made from a blob.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_FAVICON = f"<link rel='icon' type='image/svg+xml' href='{UI_PATH}/favicon.svg'>"
_STYLE = "<style>body { margin: 0; padding: 0 }</style>"


class DashboardPage(OpenAPIRenderPlugin):
    """The dashboard's HTML page at `/` (the OpenAPI router's default page)."""

    def __init__(self) -> None:
        super().__init__(path="/")
        self.page = (STATIC / "index.html").read_bytes()

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        return self.page


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """The dashboard at `/`, Swagger UI at `/docs` and Redoc at `/redoc`, all from vendored files."""
    vendor = f"{UI_PATH}/vendor"
    return [
        DashboardPage(),
        SwaggerRenderPlugin(
            path="/docs",
            js_url=f"{vendor}/swagger-ui/swagger-ui-bundle.js",
            css_url=f"{vendor}/swagger-ui/swagger-ui.css",
            standalone_preset_js_url=f"{vendor}/swagger-ui/swagger-ui-standalone-preset.js",
            favicon=_FAVICON,
            style=_STYLE,
        ),
        RedocRenderPlugin(
            path="/redoc",
            js_url=f"{vendor}/redoc/redoc.standalone.js",
            google_fonts=False,
            favicon=_FAVICON,
            style=_STYLE,
        ),
    ]


def static_files() -> Router:
    """`/ui/...`: the dashboard's files and the vendored bundles (not in the OpenAPI document)."""
    return create_static_files_router(
        path=UI_PATH,
        directories=[STATIC],
        include_in_schema=False,
    )


class PageHeaders:
    """Security headers on the pages and their files (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/")
        if path in ("/docs", "/redoc"):
            csp = DOCS_CSP
        elif path == "" or path.startswith(UI_PATH + "/"):
            csp = DASHBOARD_CSP
        else:
            await self.app(scope, receive, send)
            return
        extra = [
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

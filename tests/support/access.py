"""What the access tests share: credentials in headers, keys made by the admin, and streams opened,
read until closed, or refused."""

from __future__ import annotations

from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import ADMIN
from tests.support.client import Api
from tests.support.system import System


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def make_key(system: System, role: str, **extra: Any) -> dict[str, Any]:
    r = httpx.post(
        f"{system.base_url}/api/keys",
        json={"name": f"e2e {role}", "role": role, **extra},
        headers=bearer(ADMIN),
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def with_query(path: str, **query: str) -> str:
    return path + ("&" if "?" in path else "?") + "&".join(f"{k}={v}" for k, v in query.items())


async def frames_until_closed(ws: ClientConnection, shown: list[str]) -> tuple[int | None, str]:
    """Read (and keep) frames until the server closes the stream: its close code and reason."""
    try:
        while True:
            shown.append(str(await ws.recv()))
    except ConnectionClosed as closed:
        return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, "")


async def close_code(url: str, shown: list[str], headers: dict[str, str] | None = None) -> int | None:
    """The close code the server ends the stream with; None when it stays open for a first frame."""
    async with connect(url, additional_headers=headers or {}, open_timeout=10) as ws:
        try:
            shown.append(str(await ws.recv()))  # a heartbeat or an event, or the close
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        return None


async def sse_status(
    http: httpx.AsyncClient, url: str, shown: list[str], headers: dict[str, str] | None = None
) -> int:
    """The status an SSE request is answered with; when 200, its stream is read up to its first event."""
    async with http.stream("GET", url, headers=headers or {}) as r:
        if r.status_code != 200:
            shown.append((await r.aread()).decode())
            if r.status_code == 401:
                assert r.headers["www-authenticate"] == "Bearer"
            return r.status_code
        async for line in r.aiter_lines():
            shown.append(line)
            if line.startswith("data:"):
                break
        return r.status_code


async def waiting_run(api: Api) -> dict[str, Any]:
    """A run that waits for a decision (for ten minutes): its streams stay open."""
    task = await api.task(require_approval=True, approval_timeout_s=600)
    run = await api.run(task["id"])
    return await api.wait_status(run["id"], "awaiting_approval")

"""Access across gateway copies: a key revoked through one copy ends its streams on another, and
each identity holds at most GATEWAY_MAX_STREAMS streams on a copy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import ADMIN
from tests.support.access import bearer, close_code, frames_until_closed, make_key, sse_status, waiting_run
from tests.support.client import Api
from tests.support.system import System, start_system
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shown() -> list[str]:
    """What the streams showed (a heartbeat, an event, a refusal)."""
    return []


@pytest.fixture(scope="module")
def capped() -> Iterator[System]:
    """A system with authentication on, two gateway copies, where each identity may hold two streams
    open on each copy."""
    system = start_system(
        gateways=2, AGENTBUS_ADMIN_TOKEN=ADMIN, GATEWAY_MAX_STREAMS="2", WS_HEARTBEAT_S="0.5"
    )
    try:
        yield system
    finally:
        system.stop()


async def test_each_identity_holds_at_most_max_streams(capped: System, shown: list[str]) -> None:
    admin = Api(capped.base_url, capped.ws_url, token=ADMIN)
    run = await waiting_run(admin)
    mine, other = make_key(capped, "viewer")["key"], make_key(capped, "viewer")["key"]
    ws, sse = capped.ws_url, f"/api/runs/{run['id']}/events"

    async def opens_ws() -> bool:
        return await close_code(f"{ws}/ws/stream?token={mine}", shown) is None

    async def opens_sse() -> bool:
        return await sse_status(admin.http, sse, shown, bearer(mine)) == 200

    async with (
        connect(f"{ws}/ws/tasks/{run['task_id']}?token={mine}", open_timeout=10) as first,
        httpx.AsyncClient(base_url=capped.base_url, timeout=10) as http,
        http.stream("GET", sse, headers=bearer(mine)) as second,
    ):
        shown.append(str(await first.recv()))
        assert second.status_code == 200
        lines = second.aiter_lines()  # kept: a reader dropped closes the response
        async for line in lines:  # up to its first event: it holds its slot
            shown.append(line)
            if line.startswith("data:"):
                break
        # Both slots are held: a third stream is refused, whichever kind; another identity has its own.
        for path in ("/ws/stream", f"/ws/runs/{run['id']}", f"/ws/tasks/{run['task_id']}"):
            async with connect(f"{ws}{path}?token={mine}", open_timeout=10) as third:
                code, reason = await frames_until_closed(third, shown)
            assert code == 4429 and "too many open streams" in reason, (path, code, reason)
        refused = await admin.http.get(sse, headers=bearer(mine))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1, refused.text
        assert "too many open streams" in refused.json()["detail"]
        assert await close_code(f"{ws}/ws/stream?token={other}", shown) is None
        await first.close()
        await eventually(opens_ws, 10, "a WebSocket frees its slot when it closes")
    # The SSE stream has ended too: both slots free again.
    await eventually(opens_sse, 10, "an SSE stream frees its slot when it ends")

    async def two_open() -> bool:
        async with (
            connect(f"{ws}/ws/stream?token={mine}", open_timeout=10) as one,
            connect(f"{ws}/ws/stream?token={mine}", open_timeout=10) as two,
        ):
            shown.extend([str(await one.recv()), str(await two.recv())])
            return True

    await eventually(two_open, 10, "both slots free again", retry_on=(ConnectionClosed,))
    await admin.close()


async def test_a_key_revoked_on_one_copy_ends_its_streams_on_another(
    capped: System, shown: list[str]
) -> None:
    made = make_key(capped, "viewer")
    other_ws = capped.url_of(1)[1]
    async with (
        connect(f"{other_ws}/ws/stream?token={made['key']}", open_timeout=10) as ws,
        httpx.AsyncClient(base_url=capped.base_url, headers=bearer(ADMIN)) as first_copy,
    ):
        shown.append(str(await ws.recv()))  # open on the second copy: a heartbeat
        r = await first_copy.delete(f"/api/keys/{made['id']}")
        assert r.status_code == 204
        revoked_at = time.monotonic()
        code, reason = await asyncio.wait_for(frames_until_closed(ws, shown), timeout=3)
        assert time.monotonic() - revoked_at < 2.0
    assert (code, reason) == (4401, "this key was revoked")

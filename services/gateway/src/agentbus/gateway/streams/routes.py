"""The WebSocket streams: `/ws/runs/{run_id}`, `/ws/tasks/{task_id}`, `/ws/stream` (everything).

Each needs a viewer (the credential may come as `?token=`: browsers cannot set headers on a
WebSocket) and one of the identity's stream slots (`Access.stream`; none left: closed with 4429).
The credential stays held while the stream is open: revoked or expired, it closes the stream with
4401 within about a second (`credentials.py`)."""

from __future__ import annotations

from litestar import WebSocket, websocket

from agentbus.gateway.access import CLOSE_TOO_MANY, Access, credential_of, needs
from agentbus.gateway.params import BIG
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.streams.hub import Hub

CLOSE_BAD_REQUEST = 4400
CLOSE_NOT_FOUND = 4404


async def accepted(socket: WebSocket, since: str | None) -> tuple[bool, int | None]:
    """Accept the stream, then check `since` (replay stored events with seq > since first; absent:
    live only). A bad value is closed with 4400 and says why: refused before accepting, a browser
    would only see the handshake fail."""
    await socket.accept()
    if since is None:
        return True, None
    if since.isascii() and since.isdigit() and len(since) <= 19 and int(since) <= BIG:
        return True, int(since)
    await socket.close(code=CLOSE_BAD_REQUEST, reason=f"since must be an integer from 0 to {BIG}")
    return False, None


STREAM = needs("viewer", query_token=True)


@websocket("/ws/runs/{run_id:str}", opt=STREAM)
async def run_stream(
    socket: WebSocket, run_id: str, store: GatewayStore, hub: Hub, access: Access, since: str | None = None
) -> None:
    ok, start = await accepted(socket, since)
    if not ok:
        return
    if await store.run(run_id) is None:
        await socket.close(code=CLOSE_NOT_FOUND, reason="run not found")
        return
    async with access.stream(socket.scope.get("user")) as slot:
        if not slot:
            await socket.close(code=CLOSE_TOO_MANY, reason=access.streams_refused())
            return
        await hub.serve(socket, run_id=run_id, since=start, credential=credential_of(socket.scope))


@websocket("/ws/tasks/{task_id:str}", opt=STREAM)
async def task_stream(
    socket: WebSocket, task_id: str, store: GatewayStore, hub: Hub, access: Access, since: str | None = None
) -> None:
    ok, start = await accepted(socket, since)
    if not ok:
        return
    if await store.task(task_id) is None:
        await socket.close(code=CLOSE_NOT_FOUND, reason="task not found")
        return
    async with access.stream(socket.scope.get("user")) as slot:
        if not slot:
            await socket.close(code=CLOSE_TOO_MANY, reason=access.streams_refused())
            return
        await hub.serve(socket, task_id=task_id, since=start, credential=credential_of(socket.scope))


@websocket("/ws/stream", opt=STREAM)
async def all_stream(socket: WebSocket, hub: Hub, access: Access) -> None:
    await socket.accept()
    async with access.stream(socket.scope.get("user")) as slot:
        if not slot:
            await socket.close(code=CLOSE_TOO_MANY, reason=access.streams_refused())
            return
        await hub.serve(socket, credential=credential_of(socket.scope))

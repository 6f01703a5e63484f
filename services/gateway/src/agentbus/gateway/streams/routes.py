"""The WebSocket streams: `/ws/runs/{run_id}`, `/ws/tasks/{task_id}`, `/ws/stream` (everything)."""

from __future__ import annotations

from litestar import WebSocket, websocket

from agentbus.gateway.params import StreamSince
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.streams.hub import Hub

CLOSE_NOT_FOUND = 4404


@websocket("/ws/runs/{run_id:str}")
async def run_stream(
    socket: WebSocket, run_id: str, store: GatewayStore, hub: Hub, since: StreamSince = None
) -> None:
    await socket.accept()
    if await store.run(run_id) is None:
        await socket.close(code=CLOSE_NOT_FOUND, reason="run not found")
        return
    await hub.serve(socket, run_id=run_id, since=since)


@websocket("/ws/tasks/{task_id:str}")
async def task_stream(
    socket: WebSocket, task_id: str, store: GatewayStore, hub: Hub, since: StreamSince = None
) -> None:
    await socket.accept()
    if await store.task(task_id) is None:
        await socket.close(code=CLOSE_NOT_FOUND, reason="task not found")
        return
    await hub.serve(socket, task_id=task_id, since=since)


@websocket("/ws/stream")
async def all_stream(socket: WebSocket, hub: Hub) -> None:
    await socket.accept()
    await hub.serve(socket)

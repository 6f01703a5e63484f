"""The WebSocket transport: eager sends over a plain ASGI `send`, a task only for one that waits,
order kept, and a cut-off that closes after what the client already has (or drops it)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentbus.gateway.streams.transport import WebSocketSender, start_eagerly


class Socket:
    """Stands in for Litestar's WebSocket: an ASGI `send` that waits while the client's buffer is
    full (`writable` cleared), like an ASGI server's, and a `close`."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed_with: int | None = None

    async def send(self, message: dict[str, Any]) -> None:
        await self.writable.wait()
        self.sent.append(message["text"])

    async def close(self, code: int, reason: str) -> None:
        await self.writable.wait()
        self.closed_with = code


def m(text: str) -> dict[str, str]:
    return {"type": "websocket.send", "text": text}


async def test_a_coroutine_that_never_waits_finishes_on_the_callers_stack() -> None:
    done: list[int] = []

    async def quick() -> None:
        done.append(1)

    assert start_eagerly(quick()) is None and done == [1]


async def test_a_coroutine_that_waits_is_finished_by_a_task_with_results_and_errors() -> None:
    gate = asyncio.Event()
    steps: list[str] = []

    async def slow() -> None:
        steps.append("before")
        await gate.wait()
        await asyncio.sleep(0)  # a bare yield too
        steps.append("after")

    task = start_eagerly(slow())
    assert task is not None and steps == ["before"]
    gate.set()
    await asyncio.wait_for(task, 2)
    assert steps == ["before", "after"]

    async def fails_later() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    task = start_eagerly(fails_later())
    assert task is not None
    with pytest.raises(ValueError, match="boom"):
        await asyncio.wait_for(task, 2)


async def test_cancelling_the_task_reaches_the_waiting_coroutine() -> None:
    cleaned: list[bool] = []

    async def waits_forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)

    task = start_eagerly(waits_forever())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]


async def test_sender_keeps_order_through_a_full_buffer() -> None:
    socket = Socket()
    sender = WebSocketSender(socket)  # type: ignore[arg-type]
    sender.write([m("1"), m("2")])
    assert socket.sent == ["1", "2"] and sender.ready()  # sent at once, no task
    socket.writable.clear()
    sender.write([m("3"), m("4")])
    assert not sender.ready() and socket.sent == ["1", "2"]
    socket.writable.set()
    await asyncio.wait_for(sender.drained(), 2)
    assert socket.sent == ["1", "2", "3", "4"] and sender.ready()


async def test_cut_off_closes_after_what_was_sent_or_drops_a_client_that_reads_nothing() -> None:
    socket = Socket()
    sender = WebSocketSender(socket)  # type: ignore[arg-type]
    socket.writable.clear()
    sender.write([m("1")])
    sender.cut_off(1013, "too slow")
    sender.write([m("2")])  # after the cut-off: never sent
    socket.writable.set()  # the client reads again
    await asyncio.wait_for(sender.closed(), 2)
    assert socket.sent == ["1"] and socket.closed_with == 1013

    stalled = Socket()
    sender = WebSocketSender(stalled, grace_s=0.05)  # type: ignore[arg-type]
    stalled.writable.clear()
    sender.write([m("1")])
    sender.cut_off(1013, "too slow")
    await asyncio.wait_for(sender.closed(), 2)
    assert stalled.sent == [] and stalled.closed_with is None and sender.pending is None

"""How a frame reaches a WebSocket client: the ASGI `send` of Litestar's `WebSocket`, nothing else.

Fan-out sends each event to every listening client. A task per client woken for every event (the
plain way) costs a task switch per frame; at 1,000 clients that is most of the gateway's CPU. So
a frame is sent *eagerly*: `send` is called on the fan-out's own stack and, when it completes
without waiting (an ASGI server's send returns at once while the connection's buffer has room),
that is the whole cost. Only a send that must wait (the client stopped reading and its buffer is
full) becomes a task, which finishes it; until then the sender is not `ready` and frames queue in
the client's subscription. This is asyncio's eager task start (built in from Python 3.12) done
by hand for 3.11: `coroutine.send(None)` until the first suspension, then a task drives the rest.

A client that falls behind is cut off: the close frame (1013) follows the frames already handed
to the connection, once the client reads them; a client that reads nothing for `grace_s` is
dropped without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Generator
from typing import Any

from litestar import WebSocket

from agentbus.gateway.streams.stats import StreamStats

log = logging.getLogger(__name__)
_WHY = {1001: "shutdown", 4401: "revoked"}  # a close code's `cut_off` counter (else too slow)


def start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run `coro` now until it first has to wait. None when it finished without waiting (an error
    it raised is raised here), else the task that runs the rest."""
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_finish(coro, waiting_on))


class _Resume:
    """Awaitable that yields a value the coroutine yielded, to the task running `_finish`."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, None]:
        yield self.value


async def _finish(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Drive a started coroutine as a task would: hand what it waits on to the event loop, resume
    it when that is done, pass a cancellation of this task into it."""
    while True:
        try:
            # A future it awaits (or None: a bare yield, "run me again soon") goes to our task.
            await (_Resume(waiting_on) if waiting_on is not None else asyncio.sleep(0))
        except asyncio.CancelledError as exc:
            try:
                waiting_on = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return


class WebSocketSender:
    """A subscription's way to one accepted WebSocket (see the module's docstring)."""

    def __init__(self, socket: WebSocket, grace_s: float = 10.0, stats: StreamStats | None = None) -> None:
        self.socket = socket
        self.stats = stats or StreamStats()
        self.grace_s = grace_s
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time
        self.pending: asyncio.Task[None] | None = None
        self.closing: asyncio.Task[None] | None = None
        self.failed = False

    def ready(self) -> bool:
        """True when a frame handed over now goes straight out (nothing waits before it)."""
        return self.pending is None and self.closing is None and not self.failed

    def write(self, messages: list[dict[str, str]]) -> None:
        """Send these ASGI messages in order; what has to wait for the client is finished by a task."""
        if self.closing is not None or self.failed:
            return
        self.stats.frames["websocket"] += len(messages)
        send = self.socket.send
        for i, message in enumerate(messages):
            try:
                task = start_eagerly(send(message))  # type: ignore[arg-type]
            except Exception as exc:  # the connection is gone: the pump notices through receive
                self._broken(exc)
                return
            if task is not None:
                rest = messages[i + 1 :]
                self.pending = self.loop.create_task(self._after(task, rest)) if rest else task
                self.pending.add_done_callback(self._sent)
                return

    async def _after(self, first: asyncio.Task[None], rest: list[dict[str, str]]) -> None:
        await first
        send = self.socket.send
        for message in rest:
            await send(message)  # type: ignore[arg-type]

    def _sent(self, task: asyncio.Task[None]) -> None:
        self.pending = None
        if not task.cancelled() and task.exception() is not None:
            self._broken(task.exception())

    def _broken(self, exc: BaseException | None) -> None:
        self.failed = True
        log.debug("websocket send failed: %r", exc)

    async def drained(self) -> None:
        """Wait until nothing is pending (the client took what was sent, or the send failed)."""
        while (pending := self.pending) is not None:
            await asyncio.wait({pending})

    def cut_off(self, code: int, reason: str) -> None:
        """Close after what the connection already holds; drop the client if it reads nothing."""
        if self.closing is None:
            self.stats.cut_off[_WHY.get(code, "too_slow")] += 1
            self.closing = self.loop.create_task(self._close(code, reason))

    async def closed(self) -> None:
        if self.closing is not None:
            await asyncio.wait({self.closing})

    async def _close(self, code: int, reason: str) -> None:
        pending = self.pending
        if pending is not None:
            done, _ = await asyncio.wait({pending}, timeout=self.grace_s)
            if not done:  # it reads nothing: give up on it (the server drops the connection)
                pending.cancel()
                return
        if not self.failed:
            with contextlib.suppress(Exception):
                await self.socket.close(code=code, reason=reason)

"""WebSocket fan-out.

Every gateway copy subscribes to `events.live.>`, which carries each event once
it is stored. A client has its own bounded queue: a client that falls behind
is closed with 1013 and reconnects with `since`, so it never slows anyone else.
Per run, a client remembers the last `seq` it was sent: duplicates (the seam
between replay and live) are dropped, and a gap (another gateway copy stored
an earlier event but has not announced it yet) is filled from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.contracts import subjects
from agentbus.gateway.models import run_events

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 1013
CLOSE_GOING_AWAY = 1001


class _Head(msgspec.Struct):
    """The part of an event the hub routes on; the rest of the bytes are forwarded untouched."""

    run_id: str
    task_id: str
    seq: int


_head = msgspec.json.Decoder(_Head)
Frame = tuple[str, int, bytes]  # run_id, seq, payload
_OVERFLOW: Frame = ("", -1, b"")
_CLOSE: Frame = ("", -2, b"")


class Client:
    def __init__(self, hub: Hub, socket: WebSocket, run_id: str | None, task_id: str | None) -> None:
        self.hub = hub
        self.socket = socket
        self.run_id = run_id
        self.task_id = task_id
        self.queue: asyncio.Queue[Frame] = asyncio.Queue()
        self.limit = hub.queue_size
        self.last: dict[str, int] = {}
        self.dead = False

    def offer(self, frame: Frame) -> None:
        if self.dead:
            return
        if self.queue.qsize() >= self.limit:
            self.dead = True
            self.queue.put_nowait(_OVERFLOW)
            return
        self.queue.put_nowait(frame)

    async def send(self, frame: Frame) -> None:
        run_id, seq, payload = frame
        last = self.last.get(run_id)
        if last is not None:
            if seq <= last:
                return
            if seq > last + 1:
                for missing in await self.hub.stored_between(run_id, last, seq):
                    await self.socket.send_data(missing[2].decode(), mode="text")
                    self.last[run_id] = missing[1]
        await self.socket.send_data(payload.decode(), mode="text")
        self.last[run_id] = seq

    async def pump(self, replay: Iterable[Frame]) -> None:
        for frame in replay:
            await self.send(frame)
        heartbeat = self.hub.heartbeat_s
        while True:
            try:
                frame = await asyncio.wait_for(self.queue.get(), timeout=heartbeat)
            except TimeoutError:
                await self.socket.send_data(self.hub.heartbeat_frame(), mode="text")
                continue
            if frame is _OVERFLOW:
                await self.socket.close(code=CLOSE_TOO_SLOW, reason="client too slow; reconnect with since")
                return
            if frame is _CLOSE:
                await self.socket.close(code=CLOSE_GOING_AWAY, reason="gateway shutting down")
                return
            await self.send(frame)


class Hub:
    def __init__(self, engine: AsyncEngine, heartbeat_s: float, queue_size: int) -> None:
        self.engine = engine
        self.heartbeat_s = heartbeat_s
        self.queue_size = queue_size
        self.by_run: dict[str, set[Client]] = defaultdict(set)
        self.by_task: dict[str, set[Client]] = defaultdict(set)
        self.everything: set[Client] = set()
        self.sub: Any = None

    async def start(self, nc: Any) -> None:
        self.sub = await nc.subscribe(subjects.EVENTS_LIVE_ALL, cb=self._on_live, pending_msgs_limit=-1)

    def close_all(self) -> None:
        """Close every client with 1001 (going away); safe to call from a signal handler's callback."""
        for client in self.clients():
            if not client.dead:
                client.dead = True
                client.queue.put_nowait(_CLOSE)

    async def stop(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
        self.close_all()

    def clients(self) -> set[Client]:
        out = set(self.everything)
        for group in (*self.by_run.values(), *self.by_task.values()):
            out |= group
        return out

    @staticmethod
    def heartbeat_frame() -> str:
        return msgspec.json.encode({"event_type": "heartbeat", "timestamp": datetime.now(UTC)}).decode()

    async def _on_live(self, msg: Any) -> None:
        try:
            head = _head.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("undecodable live event on %s dropped", msg.subject)
            return
        frame = (head.run_id, head.seq, msg.data)
        for client in self.everything:
            client.offer(frame)
        for client in self.by_run.get(head.run_id, ()):
            client.offer(frame)
        for client in self.by_task.get(head.task_id, ()):
            client.offer(frame)

    async def stored_between(self, run_id: str, after: int, before: int, wait_s: float = 2.0) -> list[Frame]:
        """Stored events of a run with after < seq < before, waiting briefly for ones not yet committed."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            async with self.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(run_events.c.seq, run_events.c.payload)
                        .where(
                            run_events.c.run_id == run_id, run_events.c.seq > after, run_events.c.seq < before
                        )
                        .order_by(run_events.c.seq)
                    )
                ).all()
            if len(rows) == before - after - 1 or asyncio.get_running_loop().time() > deadline:
                return [(run_id, r.seq, r.payload.encode()) for r in rows]
            await asyncio.sleep(0.02)

    async def replay(self, run_id: str | None, task_id: str | None, since: int) -> list[Frame]:
        where = [run_events.c.seq > since]
        where.append(run_events.c.run_id == run_id if run_id else run_events.c.task_id == task_id)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(run_events.c.run_id, run_events.c.seq, run_events.c.payload)
                    .where(*where)
                    .order_by(run_events.c.id)
                )
            ).all()
        return [(r.run_id, r.seq, r.payload.encode()) for r in rows]

    async def serve(
        self,
        socket: WebSocket,
        run_id: str | None = None,
        task_id: str | None = None,
        since: int | None = None,
    ) -> None:
        client = Client(self, socket, run_id, task_id)
        group = self.by_run[run_id] if run_id else self.by_task[task_id] if task_id else self.everything
        # Subscribe before reading the stored log: an event stored meanwhile arrives
        # live and the per-run seq check drops the copy, so the seam has no gap.
        group.add(client)
        try:
            replay = await self.replay(run_id, task_id, since) if since is not None else []
            pump = asyncio.create_task(client.pump(replay))
            listen = asyncio.create_task(self._drain_input(socket))
            done, pending = await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            for t in done:
                exc = t.exception()
                if exc and not isinstance(exc, WebSocketDisconnect | RuntimeError):
                    log.debug("websocket ended: %r", exc)
        finally:
            group.discard(client)
            if run_id and not self.by_run.get(run_id):
                self.by_run.pop(run_id, None)
            if task_id and not self.by_task.get(task_id):
                self.by_task.pop(task_id, None)

    @staticmethod
    async def _drain_input(socket: WebSocket) -> None:
        """Read (and ignore) what the client sends, to notice when it goes away."""
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await socket.receive_data(mode="text")

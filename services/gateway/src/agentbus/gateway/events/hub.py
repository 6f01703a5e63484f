"""Fan-out of stored events to stream clients (WebSocket and Server-Sent Events alike).

Events reach a hub two ways, both only after they are stored: from the event
ingest of this process directly (`deliver_local`, no broker round trip), and
from `events.live.>` for events stored by another gateway copy (a copy skips
its own announcements by their origin header). Each client is a
`Subscription` with its own bounded queue: a client that falls behind is cut
off (WebSocket close 1013, SSE end of stream) and reconnects with `since` /
`Last-Event-ID`, so it never slows anyone else. Per run, a subscription
remembers the last `seq` it was sent: duplicates (the seam between replay and
live) are dropped, and a gap (another copy stored an earlier event but has not
announced it yet) is filled from the database.

Each event is decoded once (its routing head) and its text shared by every
client; a client's pump sends whatever has queued up without a timer per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
import weakref
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.contracts import subjects
from agentbus.gateway.models import run_events

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 1013
CLOSE_GOING_AWAY = 1001
# How long a client's stream waits for a missing event before sending what follows it. Events a
# crashed gateway copy had taken are redelivered after the ingest consumer's ack_wait (5 s).
GAP_WAIT_S = 8.0
ORIGIN_HEADER = "Agentbus-Origin"
WS_SEND_BUFFER = 128 * 1024  # the kernel doubles it
# This process's stored events reach its hubs directly; its live announcements carry this id.
ORIGIN = uuid.uuid4().hex
_local_hubs: weakref.WeakSet[Hub] = weakref.WeakSet()


class _Head(msgspec.Struct):
    """The part of an event the hub routes on; the rest of the bytes are forwarded untouched."""

    run_id: str
    task_id: str
    seq: int
    event_type: str = ""


_head = msgspec.json.Decoder(_Head)


class Frame:
    """One stored event, shared by every client it goes to."""

    __slots__ = ("_sse", "_ws", "event_type", "run_id", "seq", "task_id", "text")

    def __init__(self, run_id: str, task_id: str, seq: int, text: str, event_type: str = "") -> None:
        self.run_id = run_id
        self.task_id = task_id
        self.seq = seq
        self.text = text
        self.event_type = event_type
        self._sse: bytes | None = None
        self._ws: bytes | None = None

    def ws(self) -> bytes:
        """The whole WebSocket text frame as a server sends it (unmasked, no extension), built once."""
        if self._ws is None:
            payload = self.text.encode()
            n = len(payload)
            if n < 126:
                head = bytes((0x81, n))
            elif n < 65536:
                head = bytes((0x81, 126)) + n.to_bytes(2, "big")
            else:
                head = bytes((0x81, 127)) + n.to_bytes(8, "big")
            self._ws = head + payload
        return self._ws

    def sse(self) -> bytes:
        """The Server-Sent Events form: the event's seq is its id (`Last-Event-ID` resumes after it)."""
        if self._sse is None:
            self._sse = f"id: {self.seq}\ndata: {self.text}\n\n".encode()
        return self._sse


class TooSlow(Exception):
    """The client's queue overflowed: it must reconnect and resume from the stored log."""


class GoingAway(Exception):
    """The gateway is shutting down."""


def deliver_local(events: Iterable[tuple[str, str, int, str, bytes]]) -> None:
    """Hand events this process has just stored, as (task_id, run_id, seq, event_type, payload), to
    its hubs."""
    if not _local_hubs:
        return
    frames = [Frame(run_id, task_id, seq, raw.decode(), kind) for task_id, run_id, seq, kind, raw in events]
    for hub in list(_local_hubs):
        hub.fan_out(frames)


class DirectWriter:
    """Writes pre-encoded frames straight to a uvicorn WebSocket connection's transport.

    The frame bytes of an event are the same for every client (server frames are unmasked), so
    they are built once and each client costs one buffer append. Used only when the connection is
    uvicorn's websockets-sansio protocol with no extension negotiated (no per-message deflate) and
    its transport is below its high-water mark; otherwise frames take the ASGI path.
    """

    __slots__ = ("loop", "proto", "transport")

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.transport = proto.transport
        self.loop = asyncio.get_running_loop()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # A fixed kernel send buffer instead of Linux's autotuning (up to 4 MB a socket): a client
            # that stops reading is noticed after a few hundred KB, not megabytes, and costs no more.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WS_SEND_BUFFER)

    @classmethod
    def of(cls, send: Any) -> DirectWriter | None:
        proto = _find_protocol(send)
        if proto is None or type(proto).__name__ != "WebSocketsSansIOProtocol":
            return None
        conn = getattr(proto, "conn", None)
        if conn is None or getattr(conn, "extensions", None) or not hasattr(proto, "writable"):
            return None
        return cls(proto)

    def ready(self) -> bool:
        p = self.proto
        return (
            p.writable.is_set()
            and not p.close_sent
            and not p.disconnected
            and not self.transport.is_closing()
        )

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def cut_off(self, code: int, reason: str, grace_s: float = 10.0) -> None:
        """Close a client that stopped keeping up, even while a send waits on its full buffer: the
        close frame goes after what is buffered, and the connection is dropped if it is not read."""
        p = self.proto
        if p.close_sent or p.disconnected or self.transport.is_closing():
            return
        try:
            p.conn.send_close(code, reason)
            self.transport.write(b"".join(p.conn.data_to_send()))
        except Exception:  # the protocol is not open any more: nothing to say goodbye on
            pass
        p.close_sent = True
        self.loop.call_later(grace_s, self.transport.abort)

    def now(self) -> float:
        return self.loop.time()


def _find_protocol(send: Any, depth: int = 0) -> Any:
    """The server protocol object behind an ASGI `send` (through Litestar's wrappers), if any."""
    owner = getattr(send, "__self__", None)
    if owner is not None and hasattr(owner, "transport") and hasattr(owner, "conn"):
        return owner
    if depth > 8:
        return None
    for cell in getattr(send, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if callable(value) and (hasattr(value, "__closure__") or hasattr(value, "__self__")):
            found = _find_protocol(value, depth + 1)
            if found is not None:
                return found
    return None


class Subscription:
    """One client's view of the stored events: what it asked for, its bounded queue, its seqs."""

    def __init__(self, hub: Hub, run_id: str | None, task_id: str | None) -> None:
        self.hub = hub
        self.run_id = run_id
        self.task_id = task_id
        self.queue: deque[Frame] = deque()
        self.limit = hub.queue_size
        self.last: dict[str, int] = {}
        self.connected_at = datetime.now(UTC)
        self.overflowed = False
        self.going_away = False
        self._waiter: asyncio.Future[None] | None = None
        # Set by a WebSocket whose connection can take pre-encoded frames (see DirectWriter): while
        # the pump is idle, frames are written straight from the fan-out, no task switch per frame.
        self.direct: DirectWriter | None = None
        self.sent_at = 0.0
        self.replay: list[Frame] = []

    @property
    def dead(self) -> bool:
        return self.overflowed or self.going_away

    def offer(self, frame: Frame) -> None:
        if self.overflowed or self.going_away:
            return
        direct = self.direct
        if direct is not None and self._waiter is not None and not self.queue and direct.ready():
            verdict = self._place(frame)
            if verdict == 1:
                direct.write(frame.ws())
                self.sent_at = direct.now()
                return
            if verdict == 0:
                return
            # A gap: the pump fills it from the stored log, in order.
        if len(self.queue) >= self.limit:
            self.overflowed = True
            self.queue.clear()
            if direct is not None:
                direct.cut_off(CLOSE_TOO_SLOW, "client too slow; reconnect with since")
        else:
            self.queue.append(frame)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def offer_many(self, frames: list[Frame]) -> None:
        """Several frames at once: on the direct path, one write for all of them."""
        direct = self.direct
        if direct is None or self._waiter is None or self.queue or self.dead or not direct.ready():
            for frame in frames:
                self.offer(frame)
            return
        out = []
        for i, frame in enumerate(frames):
            verdict = self._place(frame)
            if verdict == 1:
                out.append(frame.ws())
            elif verdict == 2:  # a gap: the rest goes through the pump, which fills it in order
                for rest in frames[i:]:
                    self.queue.append(rest)
                waiter = self._waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                break
        if out:
            direct.write(b"".join(out))
            self.sent_at = direct.now()

    def take_ready(self) -> list[Frame]:
        """The queued frames that can go now, in order (duplicates dropped); stops before a gap."""
        out: list[Frame] = []
        queue = self.queue
        while queue and not self.dead:
            verdict = self._place(queue[0])
            if verdict == 2:
                break
            frame = queue.popleft()
            if verdict == 1:
                out.append(frame)
        return out

    def close(self) -> None:
        self.going_away = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, lambda: waiter.done() or waiter.set_result(None))
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _place(self, frame: Frame) -> int:
        """0: a duplicate, drop it; 1: next in its run's order (or its first), send it; 2: a gap first."""
        last = self.last.get(frame.run_id)
        if frame.seq == (1 if last is None else last + 1):
            self.last[frame.run_id] = frame.seq
            return 1
        return 0 if last is not None and frame.seq <= last else 2

    async def _gap(self, frame: Frame) -> list[Frame]:
        """The stored events missing before `frame`, then `frame` itself.

        The first event a client sees of a run need not be its seq 1: the client joined mid-run, or
        another gateway copy stored (and will announce) an earlier event after this one. What the
        client missed since it connected is sent first; what happened before it connected is not.
        """
        after = self.last.get(frame.run_id)
        if after is None:
            after = await self.hub.last_seq_before(frame.run_id, self.connected_at)
        missing = (
            await self.hub.stored_between(frame.run_id, after, frame.seq) if frame.seq > after + 1 else []
        )
        self.last[frame.run_id] = frame.seq
        return [*missing, frame]

    async def frames(self) -> AsyncIterator[Frame | None]:
        """The replayed frames, then live ones as they come, in per-run seq order without duplicates;
        None when a heartbeat is due. Raises TooSlow or GoingAway when the client must go."""
        replay, self.replay = self.replay, []
        for frame in replay:
            verdict = self._place(frame)
            if verdict == 1:
                yield frame
            elif verdict == 2:
                for out in await self._gap(frame):
                    yield out
        heartbeat = self.hub.heartbeat_s
        queue = self.queue
        while True:
            if self.going_away:
                raise GoingAway
            if self.overflowed:
                raise TooSlow
            if not queue:
                await self._wait(heartbeat)
                if not queue and not self.dead:
                    loop = asyncio.get_running_loop()
                    idle = loop.time() - self.sent_at
                    if idle >= heartbeat * 0.99:  # nothing went out directly meanwhile
                        self.sent_at = loop.time()
                        yield None
                    else:
                        await self._wait(heartbeat - idle)
                        if not queue and not self.dead and loop.time() - self.sent_at >= heartbeat * 0.99:
                            self.sent_at = loop.time()
                            yield None
                continue
            frame = queue.popleft()
            verdict = self._place(frame)
            if verdict == 1:
                yield frame
            elif verdict == 2:
                for out in await self._gap(frame):
                    yield out


class Hub:
    def __init__(self, engine: AsyncEngine, heartbeat_s: float, queue_size: int) -> None:
        self.engine = engine
        self.heartbeat_s = heartbeat_s
        self.queue_size = queue_size
        self.by_run: dict[str, set[Subscription]] = defaultdict(set)
        self.by_task: dict[str, set[Subscription]] = defaultdict(set)
        self.everything: set[Subscription] = set()
        self.sub: Any = None
        self._timelines: dict[str, asyncio.Future[tuple[datetime, int, list[tuple[int, datetime]]]]] = {}

    async def start(self, nc: Any) -> None:
        self.sub = await nc.subscribe(subjects.EVENTS_LIVE_ALL, cb=self._on_live, pending_msgs_limit=-1)
        _local_hubs.add(self)

    def close_all(self) -> None:
        """Close every client (WebSocket 1001, SSE end of stream); safe from a signal handler's callback."""
        for client in self.clients():
            client.close()

    async def stop(self) -> None:
        _local_hubs.discard(self)
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
        self.close_all()

    def clients(self) -> set[Subscription]:
        out = set(self.everything)
        for group in (*self.by_run.values(), *self.by_task.values()):
            out |= group
        return out

    @staticmethod
    def heartbeat_frame() -> str:
        return msgspec.json.encode({"event_type": "heartbeat", "timestamp": datetime.now(UTC)}).decode()

    async def _on_live(self, msg: Any) -> None:
        if msg.headers and msg.headers.get(ORIGIN_HEADER) == ORIGIN:
            return  # stored by this process: its hubs had it from deliver_local already
        try:
            head = _head.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("undecodable live event on %s dropped", msg.subject)
            return
        self.fan_out([Frame(head.run_id, head.task_id, head.seq, msg.data.decode(), head.event_type)])

    def fan_out(self, frames: list[Frame]) -> None:
        if len(frames) == 1:
            frame = frames[0]
            for client in self.everything:
                client.offer(frame)
            for client in self.by_run.get(frame.run_id, ()):
                client.offer(frame)
            for client in self.by_task.get(frame.task_id, ()):
                client.offer(frame)
            return
        # A batch (the ingest stores events in batches under load): each client gets its share in
        # one write, so the cost per frame falls as the load rises.
        for client in self.everything:
            client.offer_many(frames)
        by_run: dict[str, list[Frame]] = defaultdict(list)
        by_task: dict[str, list[Frame]] = defaultdict(list)
        for frame in frames:
            if frame.run_id in self.by_run:
                by_run[frame.run_id].append(frame)
            if frame.task_id in self.by_task:
                by_task[frame.task_id].append(frame)
        for run_id, share in by_run.items():
            for client in self.by_run.get(run_id, ()):
                client.offer_many(share)
        for task_id, share in by_task.items():
            for client in self.by_task.get(task_id, ()):
                client.offer_many(share)

    async def last_seq_before(self, run_id: str, moment: datetime) -> int:
        """The highest stored seq of a run among its events that happened before `moment` (0: none).

        Asked by every client the first time it sees a run's event. A thousand clients on
        `/ws/stream` all see a run's first event at once, and a query each (through the async
        engine) kept the last of them waiting seconds, so concurrent askers share one look at the
        run's timeline since the oldest of this hub's connections.
        """
        flight = self._timelines.get(run_id)
        if flight is None:
            oldest = min((c.connected_at for c in self.clients()), default=moment)
            flight = self._timelines[run_id] = asyncio.ensure_future(
                self._timeline(run_id, min(oldest, moment))
            )
            flight.add_done_callback(lambda _: self._timelines.pop(run_id, None))
        since, base, later = await asyncio.shield(flight)
        if moment < since:  # cannot happen for a subscribed client; answered directly all the same
            return await self._last_seq_before(run_id, moment)
        return max([base, *(seq for seq, ts in later if ts < moment)])

    async def _timeline(
        self, run_id: str, since: datetime
    ) -> tuple[datetime, int, list[tuple[int, datetime]]]:
        """The last seq before `since`, and (seq, timestamp) of every event of the run from `since` on."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(run_events.c.seq, run_events.c.timestamp).where(
                        run_events.c.run_id == run_id, run_events.c.timestamp >= since
                    )
                )
            ).all()
        return since, await self._last_seq_before(run_id, since), [(r.seq, r.timestamp) for r in rows]

    async def _last_seq_before(self, run_id: str, moment: datetime) -> int:
        async with self.engine.connect() as conn:
            found = (
                await conn.execute(
                    select(func.max(run_events.c.seq)).where(
                        run_events.c.run_id == run_id, run_events.c.timestamp < moment
                    )
                )
            ).scalar()
        return found or 0

    async def stored_between(
        self, run_id: str, after: int, before: int, wait_s: float = GAP_WAIT_S
    ) -> list[Frame]:
        """Stored events of a run with after < seq < before, waiting briefly for ones not yet committed."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            async with self.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(
                            run_events.c.task_id,
                            run_events.c.seq,
                            run_events.c.event_type,
                            run_events.c.payload,
                        )
                        .where(
                            run_events.c.run_id == run_id, run_events.c.seq > after, run_events.c.seq < before
                        )
                        .order_by(run_events.c.seq)
                    )
                ).all()
            if len(rows) == before - after - 1 or asyncio.get_running_loop().time() > deadline:
                return [Frame(run_id, r.task_id, r.seq, r.payload, r.event_type) for r in rows]
            await asyncio.sleep(0.02)

    async def replay(self, run_id: str | None, task_id: str | None, since: int) -> list[Frame]:
        where = [run_events.c.seq > since]
        where.append(run_events.c.run_id == run_id if run_id else run_events.c.task_id == task_id)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        run_events.c.run_id,
                        run_events.c.task_id,
                        run_events.c.seq,
                        run_events.c.event_type,
                        run_events.c.payload,
                    )
                    .where(*where)
                    .order_by(run_events.c.id)
                )
            ).all()
        return [Frame(r.run_id, r.task_id, r.seq, r.payload, r.event_type) for r in rows]

    def subscribe(self, run_id: str | None = None, task_id: str | None = None) -> Subscription:
        client = Subscription(self, run_id, task_id)
        group = self.by_run[run_id] if run_id else self.by_task[task_id] if task_id else self.everything
        group.add(client)
        return client

    def unsubscribe(self, client: Subscription) -> None:
        run_id, task_id = client.run_id, client.task_id
        group = (
            self.by_run.get(run_id) if run_id else self.by_task.get(task_id) if task_id else self.everything
        )
        if group is not None:
            group.discard(client)
        if run_id and not self.by_run.get(run_id):
            self.by_run.pop(run_id, None)
        if task_id and not self.by_task.get(task_id):
            self.by_task.pop(task_id, None)

    @contextlib.asynccontextmanager
    async def subscription(
        self, run_id: str | None = None, task_id: str | None = None, since: int | None = None
    ) -> AsyncIterator[Subscription]:
        """Subscribe, then read the stored log: an event stored meanwhile arrives live and the per-run
        seq check drops the copy, so the seam has no gap. `client.frames()` then gives what to send.
        WebSocket and SSE clients both come through here."""
        client = self.subscribe(run_id, task_id)
        try:
            if since is not None:
                client.replay = await self.replay(run_id, task_id, since)
                if run_id is not None:
                    # The client has 1..since: an event after that which is not stored yet (a crashed
                    # gateway's batch awaiting redelivery) is a gap to wait for, not a new start.
                    client.last[run_id] = since
            yield client
        finally:
            self.unsubscribe(client)

    async def serve(
        self,
        socket: WebSocket,
        run_id: str | None = None,
        task_id: str | None = None,
        since: int | None = None,
    ) -> None:
        """Serve one accepted WebSocket until it goes away, falls behind (1013) or we shut down (1001)."""
        async with self.subscription(run_id, task_id, since) as client:
            client.direct = direct = DirectWriter.of(socket.send)
            frames = client.frames()
            pump = asyncio.create_task(
                self._pump(socket, frames)
                if direct is None
                else self._pump_direct(socket, client, direct, frames)
            )
            listen = asyncio.create_task(self._drain_input(socket))
            done, pending = await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in done:
                exc = t.exception()
                if exc and not isinstance(exc, WebSocketDisconnect | RuntimeError):
                    log.debug("websocket ended: %r", exc)

    async def _pump(self, socket: WebSocket, frames: AsyncIterator[Frame | None]) -> None:
        # The ASGI send itself, not Litestar's send_data wrapper: one message dict per frame, the text
        # already decoded once for every client.
        send = socket.send
        try:
            async for frame in frames:
                text = self.heartbeat_frame() if frame is None else frame.text
                await send({"type": "websocket.send", "text": text})
        except TooSlow:
            await socket.close(code=CLOSE_TOO_SLOW, reason="client too slow; reconnect with since")
        except GoingAway:
            await socket.close(code=CLOSE_GOING_AWAY, reason="gateway shutting down")
        finally:
            with contextlib.suppress(RuntimeError):
                await frames.aclose()  # type: ignore[attr-defined]

    async def _pump_direct(
        self,
        socket: WebSocket,
        client: Subscription,
        direct: DirectWriter,
        frames: AsyncIterator[Frame | None],
    ) -> None:
        """The pump of a connection that takes pre-encoded frames: what has queued up (a replay, or a
        backlog while the client's buffer was full) goes out in one write per wake-up."""
        proto = direct.proto
        try:
            async for frame in frames:
                if not direct.ready():
                    await proto.writable.wait()
                    if proto.close_sent or proto.disconnected:
                        return
                if frame is None:
                    direct.write(Frame("", "", 0, self.heartbeat_frame()).ws())
                    continue
                batch = [frame, *client.take_ready()]
                direct.write(b"".join(f.ws() for f in batch) if len(batch) > 1 else frame.ws())
                client.sent_at = direct.now()
        except TooSlow:
            await socket.close(code=CLOSE_TOO_SLOW, reason="client too slow; reconnect with since")
        except GoingAway:
            await socket.close(code=CLOSE_GOING_AWAY, reason="gateway shutting down")
        finally:
            with contextlib.suppress(RuntimeError):
                await frames.aclose()  # type: ignore[attr-defined]

    @staticmethod
    async def _drain_input(socket: WebSocket) -> None:
        """Read (and ignore) what the client sends, to notice when it goes away."""
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await socket.receive_data(mode="text")

"""One stream client's view of the stored events: a bounded queue, per-run order, gaps filled.

Per run, a subscription remembers the last `seq` it was sent: duplicates (the seam between replay
and live) are dropped, and a gap (another gateway copy stored an earlier event but has not
announced it yet) is filled from the stored log. A client whose queue overflows is cut off
(WebSocket close 1013, SSE end of stream) and reconnects with `since` / `Last-Event-ID`, so it
never slows anyone else. One whose credential no longer proves an identity (`credentials.py`) is
cut off too (WebSocket close 4401, SSE end of stream) and gets nothing more. WebSocket and SSE
clients share this; only their pumps differ.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Protocol

CLOSE_TOO_SLOW = 1013
CLOSE_GOING_AWAY = 1001
CLOSE_UNAUTHORIZED = 4401  # as access.py closes a stream refused at the start


class Frame:
    """One stored event, shared by every client it goes to: its JSON text as stored."""

    __slots__ = ("_message", "_sse", "event_type", "run_id", "seq", "task_id", "text")

    def __init__(self, run_id: str, task_id: str, seq: int, text: str, event_type: str = "") -> None:
        self.run_id = run_id
        self.task_id = task_id
        self.seq = seq
        self.text = text
        self.event_type = event_type
        self._sse: bytes | None = None
        self._message: dict[str, str] | None = None

    def message(self) -> dict[str, str]:
        """The ASGI message that sends it as a WebSocket text frame, one for every client."""
        if self._message is None:
            self._message = {"type": "websocket.send", "text": self.text}
        return self._message

    def sse(self) -> bytes:
        """The Server-Sent Events form: the event's seq is its id (`Last-Event-ID` resumes after it)."""
        if self._sse is None:
            self._sse = f"id: {self.seq}\ndata: {self.text}\n\n".encode()
        return self._sse


class TooSlow(Exception):
    """The client's queue overflowed: it must reconnect and resume from the stored log."""


class GoingAway(Exception):
    """The gateway is shutting down."""


class Revoked(Exception):
    """The client's credential no longer proves an identity (revoked, expired); says why."""


class Gone(Exception):
    """The client went away."""


class State(enum.Enum):
    OPEN = "open"
    OVERFLOWED = "overflowed"  # fell behind: told to go (1013)
    GOING_AWAY = "going_away"  # the gateway is shutting down (1001)
    REVOKED = "revoked"  # its credential was revoked or has expired (4401)
    GONE = "gone"  # the client went away


class StoredLog(Protocol):
    """What a subscription asks its hub: its limits and the stored log."""

    heartbeat_s: float
    queue_size: int

    async def stored_between(self, run_id: str, after: int, before: int) -> list[Frame]: ...

    async def last_seq_before(self, run_id: str, moment: datetime) -> int: ...


class Sender(Protocol):
    """Where a WebSocket subscription's frames go (see transport.py)."""

    def ready(self) -> bool: ...

    def write(self, messages: list[dict[str, str]]) -> None: ...

    def now(self) -> float: ...

    def cut_off(self, code: int, reason: str) -> None: ...


class Subscription:
    """One client's view of the stored events: what it asked for, its bounded queue, its seqs.

    A thousand idle clients are a thousand of these, so it keeps little: slots, and its queues are
    made the first time something waits in them (most clients are sent every frame directly)."""

    __slots__ = (
        "_filled",
        "_queue",
        "_waiter",
        "connected_at",
        "direct",
        "hub",
        "last",
        "limit",
        "reason",
        "replay",
        "run_id",
        "sent_at",
        "state",
        "task_id",
    )

    def __init__(self, hub: StoredLog, run_id: str | None, task_id: str | None) -> None:
        self.hub = hub
        self.run_id = run_id
        self.task_id = task_id
        self.limit = hub.queue_size
        self.last: dict[str, int] = {}
        self.connected_at = datetime.now(UTC)
        self.state = State.OPEN
        self.reason = ""  # why it was revoked
        self._waiter: asyncio.Future[None] | None = None
        # Set by a WebSocket (see transport.py): while the pump is idle and the connection takes
        # frames without waiting, frames are sent straight from the fan-out, no task switch each.
        self.direct: Sender | None = None
        self.sent_at = 0.0
        # The stored frames after the client's `since`, sent first (set by the hub).
        self.replay: deque[Frame] | None = None
        # Live frames that could not go straight out, in arrival order (made when first needed).
        self._queue: deque[Frame] | None = None
        # A filled gap's frames, placed (their run's last seq is already the gap's end) but not
        # sent yet: nothing queued may overtake them.
        self._filled: deque[Frame] | None = None

    @property
    def queue(self) -> deque[Frame]:
        """The live frames waiting for the pump."""
        if self._queue is None:
            self._queue = deque()
        return self._queue

    @property
    def dead(self) -> bool:
        return self.state is not State.OPEN

    @property
    def overflowed(self) -> bool:
        return self.state is State.OVERFLOWED

    def offer(self, frame: Frame) -> None:
        if self.state is not State.OPEN:
            return
        direct = self.direct
        if direct is not None and self._waiter is not None and not self._queue and direct.ready():
            verdict = self._place(frame)
            if verdict == 1:
                direct.write([frame.message()])
                self.sent_at = direct.now()
                return
            if verdict == 0:
                return
            # A gap: the pump fills it from the stored log, in order.
        queue = self.queue
        if len(queue) >= self.limit:
            self.state = State.OVERFLOWED
            self._queue = None
            if direct is not None:
                direct.cut_off(CLOSE_TOO_SLOW, "client too slow; reconnect with since")
        else:
            queue.append(frame)
        self._wake()

    def offer_many(self, frames: list[Frame]) -> None:
        """Several frames at once: on the direct path, one write for all of them."""
        direct = self.direct
        if direct is None or self._waiter is None or self._queue or self.dead or not direct.ready():
            for frame in frames:
                self.offer(frame)
            return
        out = []
        for i, frame in enumerate(frames):
            verdict = self._place(frame)
            if verdict == 1:
                out.append(frame.message())
            elif verdict == 2:  # a gap: the rest goes through the pump, which fills it in order
                self.queue.extend(frames[i:])
                self._wake()
                break
        if out:
            direct.write(out)
            self.sent_at = direct.now()

    def take_ready(self) -> list[Frame]:
        """The queued frames that can go now, in order (duplicates dropped); stops before a gap.
        Nothing while a gap is being filled: its frames go first."""
        out: list[Frame] = []
        queue = self._queue
        if self._filled or not queue:
            return out
        while queue and not self.dead:
            verdict = self._place(queue[0])
            if verdict == 2:
                break
            frame = queue.popleft()
            if verdict == 1:
                out.append(frame)
        return out

    def close(self) -> None:
        """The gateway is shutting down: the client goes (1001), after what it was sent."""
        self._end(State.GOING_AWAY, CLOSE_GOING_AWAY, "gateway shutting down")

    def revoke(self, reason: str) -> None:
        """The credential no longer proves an identity: nothing more is sent, the client goes (4401)."""
        if self.state is State.OPEN:
            self.reason = reason
        self._end(State.REVOKED, CLOSE_UNAUTHORIZED, reason)

    def gone(self) -> None:
        """The client went away: nothing more is sent, and `next` ends (Gone)."""
        if self.state is State.OPEN:
            self.state = State.GONE
            self._queue = None
        self._wake()

    def _end(self, state: State, code: int, reason: str) -> None:
        if self.state is State.OPEN:
            self.state = state
            self._queue = None
            if self.direct is not None:
                self.direct.cut_off(code, reason)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_open(self) -> None:
        """Raise what tells the pump why the client must go, if it must."""
        state = self.state
        if state is State.OPEN:
            return
        if state is State.GOING_AWAY:
            raise GoingAway
        if state is State.OVERFLOWED:
            raise TooSlow
        if state is State.REVOKED:
            raise Revoked(self.reason)
        raise Gone

    async def _wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _wake_up, waiter)
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

    async def next(self) -> Frame | None:
        """The next frame to send: the replayed ones, then live ones as they come, in per-run seq
        order without duplicates; None when a heartbeat is due. Raises TooSlow, GoingAway, Revoked
        or Gone when the client must go."""
        while True:
            self._check_open()
            filled = self._filled
            if filled:  # placed already: a filled gap goes out before anything else
                return filled.popleft()
            replay = self.replay
            if replay:
                frame = replay.popleft()
            elif self._queue:
                frame = self._queue.popleft()
            else:
                if await self._idle():
                    return None
                continue
            verdict = self._place(frame)
            if verdict == 1:
                return frame
            if verdict == 2:
                self._filled = deque(await self._gap(frame))

    async def _idle(self) -> bool:
        """Wait for a frame or a heartbeat's due time; True when a heartbeat is due."""
        heartbeat = self.hub.heartbeat_s
        await self._wait(heartbeat)
        if self._queue or self.dead:
            return False
        loop = asyncio.get_running_loop()
        idle = loop.time() - self.sent_at
        if idle < heartbeat * 0.99:  # something went out directly meanwhile
            await self._wait(heartbeat - idle)
            if self._queue or self.dead or loop.time() - self.sent_at < heartbeat * 0.99:
                return False
        self.sent_at = loop.time()
        return True

    async def frames(self) -> AsyncIterator[Frame | None]:
        """`next()` as an iterator, until the client must go."""
        while True:
            yield await self.next()


def _wake_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

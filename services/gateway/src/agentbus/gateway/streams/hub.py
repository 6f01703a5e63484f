"""Fan-out of stored events to stream clients (WebSocket and Server-Sent Events alike).

Events reach the hub two ways, both only after they are stored: from this process's event
ingest (`deliver`, its `on_stored` callback: no broker round trip), and from `events.live.>` for
events stored by another gateway copy (the hub skips its own process's announcements by their
origin header). Each client is a `Subscription` (subscription.py); each event is decoded once
(its routing head) and its text shared by every client.

The hub also tells who waits for a run's events that they arrived (`stored_between` filling a
gap, `wait_ended` for a cancelled run): they wait on that, not on a timer. Being where every stored
event passes, whichever copy stored it, it hands them to its `on_frames` callback too (the
admission of held runs watches for runs that end).

A client opened with a credential holds it in the hub's `CredentialWatch` while it is subscribed:
when the credential stops proving an identity the client is revoked (WebSocket 4401, SSE end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect

from agentbus.contracts.codec import decoder
from agentbus.contracts.events import Seq
from agentbus.gateway.ingest import ORIGIN_HEADER
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.effects import Batch
from agentbus.gateway.streams.credentials import CredentialWatch
from agentbus.gateway.streams.stats import StreamStats
from agentbus.gateway.streams.subscription import (
    CLOSE_GOING_AWAY,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
    Frame,
    GoingAway,
    Gone,
    Revoked,
    Subscription,
    TooSlow,
)
from agentbus.gateway.streams.transport import WebSocketSender

log = logging.getLogger(__name__)

# How long a client's stream waits for a missing event before sending what follows it. Events a
# crashed gateway copy had taken are redelivered after the ingest consumer's ack_wait (5 s).
GAP_WAIT_S = 8.0
Timeline = tuple[datetime, int, list[tuple[int, datetime]]]


class _Head(msgspec.Struct):
    """The part of an event the hub routes on; the rest of the bytes are forwarded untouched."""

    run_id: str
    task_id: str
    seq: Seq
    event_type: str = ""


_head = decoder(_Head)


class Hub:
    def __init__(
        self,
        store: GatewayStore,
        heartbeat_s: float,
        queue_size: int,
        origin: str = "",
        on_frames: Callable[[list[Frame]], None] | None = None,
        credentials: CredentialWatch | None = None,
    ) -> None:
        self.store = store
        self.credentials = credentials  # None: a client's credential is not held to account
        self.on_frames = on_frames
        self.heartbeat_s = heartbeat_s
        self.queue_size = queue_size
        self.origin = origin  # this process's announcements carry it: skipped (delivered already)
        self.by_run: dict[str, set[Subscription]] = defaultdict(set)
        self.by_task: dict[str, set[Subscription]] = defaultdict(set)
        self.everything: set[Subscription] = set()
        self.sub: Any = None
        self._timelines: dict[str, asyncio.Future[Timeline]] = {}
        self._arrivals: dict[str, set[asyncio.Event]] = {}  # run_id -> who waits for its events
        self._gone: asyncio.Event | None = None  # set when the last client has gone (at shutdown)
        self.stats = StreamStats()  # open streams, frames sent, clients cut off

    async def start(self, nc: Any, subject: str) -> None:
        self.sub = await nc.subscribe(subject, cb=self._on_live, pending_msgs_limit=-1)

    def close_all(self) -> None:
        """Close every client (WebSocket 1001, SSE end of stream); safe from a signal handler's callback."""
        for client in self.clients():
            client.close()

    async def stop(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
        self.close_all()
        if self.credentials is not None:
            await self.credentials.stop()

    async def wait_clients_gone(self, timeout: float) -> None:
        self._gone = asyncio.Event()
        if self.clients():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), timeout)

    def clients(self) -> set[Subscription]:
        out = set(self.everything)
        for group in (*self.by_run.values(), *self.by_task.values()):
            out |= group
        return out

    @staticmethod
    def heartbeat_frame() -> str:
        return msgspec.json.encode({"event_type": "heartbeat", "timestamp": datetime.now(UTC)}).decode()

    # --- events in ---------------------------------------------------------------------------

    def deliver(self, stored: Batch) -> None:
        """Events this process has just stored (the ingest's `on_stored`)."""
        self.fan_out(
            [Frame(e.run_id, e.task_id, e.seq, raw.decode(), e.__struct_config__.tag) for e, raw in stored]
        )

    async def _on_live(self, msg: Any) -> None:
        if self.origin and msg.headers and msg.headers.get(ORIGIN_HEADER) == self.origin:
            return  # stored by this process: delivered already
        try:
            head = _head.decode(msg.data)
            text = msg.data.decode()  # fields the head decoder skips are not checked for UTF-8
        except (msgspec.DecodeError, UnicodeDecodeError):
            log.warning("undecodable live event on %s dropped", msg.subject)
            return
        self.fan_out([Frame(head.run_id, head.task_id, head.seq, text, head.event_type)])

    def fan_out(self, frames: list[Frame]) -> None:
        if self.on_frames is not None:
            self.on_frames(frames)
        if self._arrivals:
            for frame in frames:
                for waiter in self._arrivals.get(frame.run_id, ()):
                    waiter.set()
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
        # one hand-over, so the cost per frame falls as the load rises.
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

    # --- waiting for events ------------------------------------------------------------------

    @contextlib.contextmanager
    def _watching(self, run_ids: Sequence[str]) -> Any:
        """An event set whenever one of these runs' events arrives (register before reading the
        store: an arrival during the read is not missed)."""
        arrived = asyncio.Event()
        for run_id in run_ids:
            self._arrivals.setdefault(run_id, set()).add(arrived)
        try:
            yield arrived
        finally:
            for run_id in run_ids:
                waiters = self._arrivals.get(run_id)
                if waiters is not None:
                    waiters.discard(arrived)
                    if not waiters:
                        del self._arrivals[run_id]

    async def _until(self, arrived: asyncio.Event, deadline: float) -> bool:
        """Wait for an arrival until the deadline; False when the deadline passed."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(arrived.wait(), remaining)
        except TimeoutError:
            return False
        arrived.clear()
        return True

    async def wait_ended(self, run_ids: Sequence[str], timeout: float) -> None:
        """Return once these runs have ended (their terminal event is stored), or at the timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        left = list(run_ids)
        with self._watching(left) as arrived:
            while left:
                left = await self.store.unfinished(left)
                if left and not await self._until(arrived, deadline):
                    return

    async def stored_between(
        self, run_id: str, after: int, before: int, wait_s: float = GAP_WAIT_S
    ) -> list[Frame]:
        """Stored events of a run with after < seq < before, waiting briefly for ones not yet stored."""
        deadline = asyncio.get_running_loop().time() + wait_s
        with self._watching([run_id]) as arrived:
            while True:
                rows = await self.store.events_between(run_id, after, before)
                if len(rows) == before - after - 1 or not await self._until(arrived, deadline):
                    return [Frame(*r[:3], r.payload, r.event_type) for r in rows]

    # --- the stored log ----------------------------------------------------------------------

    async def last_seq_before(self, run_id: str, moment: datetime) -> int:
        """The highest stored seq of a run among its events that happened before `moment` (0: none).

        Asked by every client the first time it sees a run's event. A thousand clients on
        `/ws/stream` all see a run's first event at once, and a query each kept the last of them
        waiting seconds, so concurrent askers share one look at the run's timeline since the
        oldest of this hub's connections.
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
            return await self.store.last_seq_before(run_id, moment)
        return max([base, *(seq for seq, ts in later if ts < moment)])

    async def _timeline(self, run_id: str, since: datetime) -> Timeline:
        """The last seq before `since`, and (seq, timestamp) of every event of the run from `since` on."""
        later = await self.store.timeline(run_id, since)
        return since, await self.store.last_seq_before(run_id, since), later

    async def replay(self, run_id: str | None, task_id: str | None, since: int) -> list[Frame]:
        rows = await self.store.replay(run_id, task_id, since)
        return [Frame(r.run_id, r.task_id, r.seq, r.payload, r.event_type) for r in rows]

    # --- clients -----------------------------------------------------------------------------

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
        if self._gone is not None and not self.clients():
            self._gone.set()

    async def join(
        self,
        run_id: str | None = None,
        task_id: str | None = None,
        since: int | None = None,
        credential: str | None = None,
    ) -> Subscription:
        """Subscribe, then read the stored log: an event stored meanwhile arrives live and the per-run
        seq check drops the copy, so the seam has no gap. `client.next()` then gives what to send.
        WebSocket and SSE clients both come through here, holding the `credential` they were opened
        with until `leave` (its loss revokes the client)."""
        client = self.subscribe(run_id, task_id)
        try:
            if self.credentials is not None:
                self.credentials.hold(credential, client.revoke)
            if since is not None:
                client.replay = deque(await self.replay(run_id, task_id, since))
                if run_id is not None:
                    # The client has 1..since: an event after that which is not stored yet (a
                    # crashed gateway's batch awaiting redelivery) is a gap to wait for, not a
                    # new start.
                    client.last[run_id] = since
        except BaseException:
            self.leave(client, credential)
            raise
        return client

    def leave(self, client: Subscription, credential: str | None = None) -> None:
        """The client is done: unsubscribed, its credential no longer held for it."""
        if self.credentials is not None:
            self.credentials.release(credential, client.revoke)
        self.unsubscribe(client)

    async def serve(
        self,
        socket: WebSocket,
        run_id: str | None = None,
        task_id: str | None = None,
        since: int | None = None,
        credential: str | None = None,
    ) -> None:
        """Serve one accepted WebSocket until it goes away, falls behind (1013), its credential stops
        proving an identity (4401) or we shut down (1001).

        An idle client costs what it holds while it waits, times a thousand clients: its pump runs
        on the handler's own task (no task of its own, no `asyncio.wait`), the client's input is
        read by one task that tells the subscription when the client has gone."""
        client = await self.join(run_id, task_id, since, credential)
        client.direct = sender = WebSocketSender(socket, stats=self.stats)
        listen = asyncio.get_running_loop().create_task(_listen(socket, client))
        self.stats.open["websocket"] += 1
        try:
            await self._pump(client, sender)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went while a frame was going out
        except Exception as exc:
            log.debug("websocket ended: %r", exc)
        finally:
            self.stats.open["websocket"] -= 1
            listen.cancel()
            await asyncio.gather(listen, return_exceptions=True)
            if sender.pending is not None:
                sender.pending.cancel()
            self.leave(client, credential)

    async def _pump(self, client: Subscription, sender: WebSocketSender) -> None:
        """Send what the fan-out could not send straight away: a replay, a gap filled from the log,
        a backlog queued while the client's buffer was full (in one hand-over per wake-up), and
        heartbeats. Ends when the client must go, after its close frame."""
        try:
            while True:
                frame = await client.next()
                await sender.drained()
                if sender.failed:
                    return
                if frame is None:
                    sender.write([{"type": "websocket.send", "text": self.heartbeat_frame()}])
                    continue
                sender.write([frame.message(), *(f.message() for f in client.take_ready())])
                client.sent_at = sender.now()
        except TooSlow:
            sender.cut_off(CLOSE_TOO_SLOW, "client too slow; reconnect with since")
            await sender.closed()
        except GoingAway:
            sender.cut_off(CLOSE_GOING_AWAY, "gateway shutting down")
            await sender.closed()
        except Revoked as exc:
            sender.cut_off(CLOSE_UNAUTHORIZED, str(exc))
            await sender.closed()
        except Gone:
            return


async def _listen(socket: WebSocket, client: Subscription) -> None:
    """Read (and ignore) what the client sends, to notice when it goes away."""
    try:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await socket.receive_data(mode="text")
    finally:
        client.gone()

"""Storing run events: a durable JetStream consumer shared by every gateway copy.

Events are written in batches (one transaction, `GatewayStore.store_events`), acked only after
the commit, and only then handed on: to this process's stream clients through the `on_stored`
callback, and to every other gateway copy's on `events.live.*`. A client never sees an event that
GET /api/runs/{id} does not show yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentbus.common.bus import retrying_setup
from agentbus.common.db import is_poison
from agentbus.contracts import decode_event, subjects
from agentbus.gateway.bus import Bus
from agentbus.gateway.conflicts import Conflicts, Verdict
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.effects import Batch, Stored

log = logging.getLogger(__name__)
# Marks this process's live announcements, so its own hub skips them (it had them from on_stored).
ORIGIN_HEADER = "Agentbus-Origin"
OnStored = Callable[[Batch], None]


class EventIngest:
    def __init__(
        self,
        store: GatewayStore,
        bus: Bus,
        on_stored: OnStored,
        origin: str,
        batch: int = 500,
        on_deliveries: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.on_deliveries = on_deliveries  # a batch made webhook deliveries (committed with it)
        self.bus = bus
        self.conflicts = Conflicts(store, bus)
        self.on_stored = on_stored
        self.origin = {ORIGIN_HEADER: origin}
        self.batch = batch
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.sub: Any = None
        self.task: asyncio.Task[None] | None = None
        # read by the Prometheus exposition: events stored, undecodable ones, dead letters, and the
        # age (seconds) of the newest event of the last stored batch when it was committed
        self.stored = 0
        self.decode_failures = 0
        self.dead_letters = 0
        self.lag_s = 0.0

    async def start(self) -> None:
        self.sub = await retrying_setup("the gateway's event consumer", self._subscribe)
        self.task = asyncio.create_task(self._consume(), name="event-ingest")

    async def _subscribe(self) -> Any:
        return await self.bus.js.subscribe(
            subjects.EVENTS_RUN_ALL,
            stream=subjects.EVENTS_STREAM,
            durable=subjects.GATEWAY_EVENTS_CONSUMER,
            queue=subjects.GATEWAY_EVENTS_CONSUMER,
            cb=self._on_msg,
            manual_ack=True,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                # Short: a crashed gateway copy's unacked events go to another copy within seconds.
                ack_wait=5,
                max_ack_pending=20000,
            ),
        )

    async def stop(self) -> None:
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            except Exception:
                pass
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def _on_msg(self, msg: Msg) -> None:
        self.queue.put_nowait(msg)

    async def _consume(self) -> None:
        while True:
            msgs = [await self.queue.get()]
            while len(msgs) < self.batch and not self.queue.empty():
                msgs.append(self.queue.get_nowait())
            await self._store_batch(msgs)

    async def _store_batch(self, msgs: list[Msg]) -> None:
        """Store a batch, retrying in place while the database is away.

        Retrying here, rather than nak-ing, keeps the events in order: later events wait behind
        the batch instead of overtaking it, so a run's stored log never shows a terminal event
        with an earlier event still missing. JetStream keeps the messages meanwhile (in_progress
        resets their ack_wait); if this gateway dies, another copy gets them.
        """
        delay = 0.2
        while True:
            try:
                await self._handle(msgs)
                return
            except Exception as exc:
                if is_poison(exc):
                    if len(msgs) > 1:
                        # Store the rest one by one: one unstorable event must not hold the others.
                        for m in msgs:
                            await self._store_batch([m])
                        return
                    log.error("an event on %s can never be stored (%s); dead-lettered", msgs[0].subject, exc)
                    self.dead_letters += 1
                    with contextlib.suppress(Exception):
                        await self.bus.nc.publish(subjects.EVENTS_DEAD, msgs[0].data)
                        await msgs[0].term()
                    return
                log.warning("storing %d events failed (%s); retrying in %.1fs", len(msgs), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                for m in msgs:
                    with contextlib.suppress(Exception):
                        await m.in_progress()

    async def _handle(self, msgs: list[Msg]) -> None:
        decoded: Batch = []
        sent_by: dict[bytes, Msg] = {}
        for m in msgs:
            try:
                decoded.append((decode_event(m.data), m.data))
                sent_by[m.data] = m
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("dropping an event on %s that does not decode: %s", m.subject, exc)
                self.decode_failures += 1
                self.dead_letters += 1
                await self.bus.nc.publish(subjects.EVENTS_DEAD, m.data)
        result = await self.store.store_events(decoded) if decoded else Stored([], [])
        if result.deliveries and self.on_deliveries is not None:
            self.on_deliveries()
        stored = list(result.events)
        later: set[int] = set()  # ids of the messages of conflicts to decide on a later delivery
        for conflict in result.conflicts:
            m = sent_by[conflict.raw]
            verdict, replaced = await self.conflicts.resolve(conflict, m.metadata.num_delivered)
            stored += replaced
            if verdict is Verdict.LATER:
                later.add(id(m))
        if stored:
            self.stored += len(stored)
            with contextlib.suppress(Exception):  # the newest message's JetStream timestamp
                self.lag_s = max(0.0, time.time() - msgs[-1].metadata.timestamp.timestamp())
            # Committed: this process's stream clients get the events directly, the other gateway
            # copies through events.live (they tell theirs from ours by the origin header).
            self.on_stored(stored)
            for event, raw in stored:
                await self.bus.nc.publish(
                    subjects.live_event(event.task_id, event.run_id), raw, headers=self.origin
                )
        for m in msgs:
            if id(m) in later:
                await m.nak(delay=0.5)
            else:
                await m.ack()

"""Storing run events: a durable JetStream consumer shared by every gateway copy.

Events are written in batches (one transaction), acked only after the commit,
and only then announced on `events.live.*` to every gateway's WebSocket
clients: a client never sees an event that GET /api/runs/{id} does not show yet.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.contracts import decode_event, subjects
from agentbus.contracts import events as ev
from agentbus.gateway.events.apply import apply_event, task_counters
from agentbus.gateway.models import artifacts, run_events, runs, tasks

log = logging.getLogger(__name__)

RUN_COLUMNS = (
    "status",
    "plan",
    "progress",
    "results",
    "error_message",
    "started_at",
    "completed_at",
    "duration",
    "approval",
    "last_seq",
    "updated_at",
)


class EventIngest:
    def __init__(self, engine: AsyncEngine, bus: Any, batch: int = 500) -> None:
        self.engine = engine
        self.bus = bus
        self.batch = batch
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.sub: Any = None
        self.task: asyncio.Task[None] | None = None
        dialect = engine.dialect.name
        self._insert = pg_insert if dialect == "postgresql" else sqlite_insert

    async def start(self) -> None:
        self.sub = await self.bus.js.subscribe(
            subjects.EVENTS_RUN_ALL,
            stream=subjects.EVENTS_STREAM,
            durable=subjects.GATEWAY_EVENTS_CONSUMER,
            queue=subjects.GATEWAY_EVENTS_CONSUMER,
            cb=self._on_msg,
            manual_ack=True,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30,
                max_ack_pending=20000,
            ),
        )
        self.task = asyncio.create_task(self._writer(), name="event-ingest")

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

    async def _writer(self) -> None:
        while True:
            msgs = [await self.queue.get()]
            while len(msgs) < self.batch and not self.queue.empty():
                msgs.append(self.queue.get_nowait())
            try:
                await self._handle(msgs)
            except Exception as exc:
                # The database is away or refused the batch: JetStream keeps the events.
                log.warning("storing %d events failed (%s); they will be redelivered", len(msgs), exc)
                for m in msgs:
                    try:
                        await m.nak(delay=1)
                    except Exception:
                        pass
                await asyncio.sleep(0.5)

    async def _handle(self, msgs: list[Msg]) -> None:
        decoded: list[tuple[ev.Event, bytes]] = []
        for m in msgs:
            try:
                decoded.append((decode_event(m.data), m.data))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("dropping an event on %s that does not decode: %s", m.subject, exc)
                await self.bus.nc.publish(subjects.EVENTS_DEAD, m.data)
        stored = await self.store(decoded) if decoded else []
        for event, raw in stored:
            await self.bus.nc.publish(subjects.live_event(event.task_id, event.run_id), raw)
        for m in msgs:
            await m.ack()

    async def store(self, batch: list[tuple[ev.Event, bytes]]) -> list[tuple[ev.Event, bytes]]:
        """Store new events and their effects in one transaction; returns the ones not seen before."""
        stored: list[tuple[ev.Event, bytes]] = []
        async with self.engine.begin() as conn:
            ids = {e.run_id for e, _ in batch}
            rows = {r.id: r._asdict() for r in await conn.execute(select(runs).where(runs.c.id.in_(ids)))}
            dirty: set[str] = set()
            ended: list[dict[str, Any]] = []
            for event, raw in batch:
                run = rows.get(event.run_id)
                if run is None:
                    log.info("event %s of unknown run %s dropped (deleted?)", event.seq, event.run_id)
                    continue
                result = await conn.execute(
                    self._insert(run_events)
                    .values(
                        run_id=event.run_id,
                        task_id=event.task_id,
                        seq=event.seq,
                        event_type=event.__struct_config__.tag,
                        timestamp=event.timestamp,
                        payload=raw.decode(),
                    )
                    .on_conflict_do_nothing(index_elements=["run_id", "seq"])
                )
                if result.rowcount == 0:
                    continue  # a redelivery: stored and applied already
                stored.append((event, raw))
                if apply_event(run, event):
                    ended.append(run)
                dirty.add(run["id"])
                if isinstance(event, ev.ArtifactCreated):
                    await conn.execute(
                        self._insert(artifacts)
                        .values(
                            run_id=event.run_id,
                            task_id=event.task_id,
                            name=event.data.name,
                            size=event.data.size,
                            content_type=event.data.content_type,
                            created_at=event.timestamp,
                        )
                        .on_conflict_do_nothing(index_elements=["run_id", "name"])
                    )
            for run_id in dirty:
                run = rows[run_id]
                await conn.execute(
                    runs.update().where(runs.c.id == run_id).values({c: run[c] for c in RUN_COLUMNS})
                )
                await conn.execute(
                    tasks.update()
                    .where(tasks.c.id == run["task_id"], tasks.c.latest_run_id == run_id)
                    .values(status=run["status"], updated_at=run["updated_at"])
                )
            for run in ended:
                c = task_counters(run)
                await conn.execute(
                    tasks.update()
                    .where(tasks.c.id == run["task_id"])
                    .values(
                        total_runs=tasks.c.total_runs + 1,
                        successful_runs=tasks.c.successful_runs + c["succeeded"],
                        failed_runs=tasks.c.failed_runs + c["failed"],
                        last_run_duration=c["last_run_duration"],
                        last_error=c["last_error"],
                        updated_at=run["updated_at"],
                    )
                )
        return stored

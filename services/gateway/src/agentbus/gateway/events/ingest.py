"""Storing run events: a durable JetStream consumer shared by every gateway copy.

Events are written in batches (one transaction), acked only after the commit,
and only then announced on `events.live.*` to every gateway's WebSocket
clients: a client never sees an event that GET /api/runs/{id} does not show yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.common.db import is_poison
from agentbus.common.writer import Writer
from agentbus.contracts import decode_event, subjects
from agentbus.contracts import events as ev
from agentbus.gateway.events.apply import apply_event, task_counters
from agentbus.gateway.events.hub import ORIGIN, ORIGIN_HEADER, deliver_local
from agentbus.gateway.models import artifacts, run_events, runs, tasks

log = logging.getLogger(__name__)
_ORIGIN = {ORIGIN_HEADER: ORIGIN}

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
    def __init__(self, engine: AsyncEngine, bus: Any, batch: int = 500, writer: Writer | None = None) -> None:
        self.engine = engine
        self.bus = bus
        self.batch = batch
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.sub: Any = None
        self.task: asyncio.Task[None] | None = None
        insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._insert_events = (
            insert(run_events)
            .on_conflict_do_nothing(index_elements=["run_id", "seq"])
            .returning(run_events.c.run_id, run_events.c.seq)
        )
        # An agent may write an artifact again (e.g. a step re-run after its runner was lost): the index
        # follows the bytes it replaced.
        upsert = insert(artifacts)
        self._insert_artifacts = upsert.on_conflict_do_update(
            index_elements=["run_id", "name"],
            set_={c: upsert.excluded[c] for c in ("size", "content_type", "created_at")},
        )
        # SQLite: the whole batch is one unit of the process's writer thread (one hand-off per
        # batch, on the one connection that holds the write lock). Through aiosqlite every
        # statement, cursor and commit was a round trip to its thread, and those round trips
        # were most of the event latency in the profile.
        self.writer = writer or Writer(engine, "event-ingest-db")
        self._own_writer = writer is None
        # PostgreSQL: plain asyncpg on a connection of its own (see pg_store).
        self._pg: Any = None
        if engine.dialect.name == "postgresql":
            from agentbus.gateway.events.pg_store import PgEventStore

            self._pg = PgEventStore(engine.url)

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
                # Short: a crashed gateway copy's unacked events go to another copy within seconds.
                ack_wait=5,
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
        if self._own_writer:
            await self.writer.close()
        if self._pg is not None:
            await self._pg.close()

    async def _on_msg(self, msg: Msg) -> None:
        self.queue.put_nowait(msg)

    async def _writer(self) -> None:
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
        decoded: list[tuple[ev.Event, bytes]] = []
        for m in msgs:
            try:
                decoded.append((decode_event(m.data), m.data))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("dropping an event on %s that does not decode: %s", m.subject, exc)
                await self.bus.nc.publish(subjects.EVENTS_DEAD, m.data)
        stored = await self.store(decoded) if decoded else []
        if stored:
            # Committed: this process's stream clients get the events directly, the other gateway
            # copies through events.live (they tell theirs from ours by the origin header).
            deliver_local((e.task_id, e.run_id, e.seq, e.__struct_config__.tag, raw) for e, raw in stored)
            for event, raw in stored:
                await self.bus.nc.publish(
                    subjects.live_event(event.task_id, event.run_id), raw, headers=_ORIGIN
                )
        for m in msgs:
            await m.ack()

    async def store(self, batch: list[tuple[ev.Event, bytes]]) -> list[tuple[ev.Event, bytes]]:
        """Store new events and their effects in one transaction; returns the ones not seen before."""
        if self._pg is not None:
            return await self._pg.store(batch)
        return await self.writer(lambda conn: self._store(conn, batch))

    def _store(self, conn: Connection, batch: list[tuple[ev.Event, bytes]]) -> list[tuple[ev.Event, bytes]]:
        """The transaction's statements: a handful per batch whatever its size (executemany, and one
        multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING that tells new events from
        redeliveries). One statement per event made storage the bottleneck of the event path."""
        ids = {e.run_id for e, _ in batch}
        # Locked for this transaction: two gateway copies storing events of one run must not
        # overwrite each other's run state (SQLite: the transaction began IMMEDIATE).
        query = _RUNS_FOR_UPDATE if conn.dialect.name == "postgresql" else _RUNS
        rows = {r.id: r._asdict() for r in conn.execute(query, {"ids": list(ids)})}
        fresh = new_candidates(rows, batch)
        if not fresh:
            return []
        result = conn.execute(self._insert_events, [event_row(e, raw) for e, raw in fresh.values()])
        inserted = {(r.run_id, r.seq) for r in result}  # the others were stored and applied already
        effects = Effects.of(rows, fresh, inserted)
        if effects.artifacts:
            conn.execute(self._insert_artifacts, effects.artifacts)
        if effects.dirty:
            conn.execute(
                _UPDATE_RUN,
                [{"b_id": r["id"], **{f"b_{c}": r[c] for c in RUN_COLUMNS}} for r in effects.dirty.values()],
            )
            conn.execute(_UPDATE_TASK_STATUS, effects.task_statuses())
        if effects.ended:
            conn.execute(_UPDATE_TASK_COUNTERS, effects.task_counters())
        return effects.stored


Batch = list[tuple[ev.Event, bytes]]


def new_candidates(
    rows: dict[str, dict[str, Any]], batch: Batch
) -> dict[tuple[str, int], tuple[ev.Event, bytes]]:
    """The batch's events of known runs, once each (a redelivery may sit in the same batch)."""
    fresh: dict[tuple[str, int], tuple[ev.Event, bytes]] = {}
    for event, raw in batch:
        if event.run_id not in rows:
            log.info("event %s of unknown run %s dropped (deleted?)", event.seq, event.run_id)
            continue
        fresh.setdefault((event.run_id, event.seq), (event, raw))
    return fresh


def event_row(e: ev.Event, raw: bytes) -> dict[str, Any]:
    return {
        "run_id": e.run_id,
        "task_id": e.task_id,
        "seq": e.seq,
        "event_type": e.__struct_config__.tag,
        "timestamp": e.timestamp,
        "payload": raw.decode(),
    }


class Effects:
    """What the newly stored events change: their runs (as dicts), the runs that ended, artifacts."""

    def __init__(self) -> None:
        self.stored: Batch = []
        self.dirty: dict[str, dict[str, Any]] = {}
        self.ended: list[dict[str, Any]] = []
        self.artifacts: list[dict[str, Any]] = []

    @classmethod
    def of(
        cls,
        rows: dict[str, dict[str, Any]],
        fresh: dict[tuple[str, int], tuple[ev.Event, bytes]],
        inserted: set[tuple[str, int]],
    ) -> Effects:
        out = cls()
        for key, (event, raw) in fresh.items():
            if key not in inserted:
                continue
            out.stored.append((event, raw))
            run = rows[event.run_id]
            if apply_event(run, event):
                out.ended.append(run)
            out.dirty[run["id"]] = run
            if isinstance(event, ev.ArtifactCreated):
                out.artifacts.append(
                    {
                        "run_id": event.run_id,
                        "task_id": event.task_id,
                        "name": event.data.name,
                        "size": event.data.size,
                        "content_type": event.data.content_type,
                        "created_at": event.timestamp,
                    }
                )
        return out

    def task_statuses(self) -> list[dict[str, Any]]:
        return [
            {"b_task": r["task_id"], "b_run": r["id"], "b_status": r["status"], "b_updated": r["updated_at"]}
            for r in self.dirty.values()
        ]

    def task_counters(self) -> list[dict[str, Any]]:
        out = []
        for run in self.ended:
            c = task_counters(run)
            out.append(
                {
                    "b_task": run["task_id"],
                    "b_succeeded": c["succeeded"],
                    "b_failed": c["failed"],
                    "b_duration": c["last_run_duration"],
                    "b_error": c["last_error"],
                    "b_updated": run["updated_at"],
                }
            )
        return out


# Built once: statement construction and cache-key generation per event showed in the profile.
# Only the columns events change are read (decoding a run's JSON config and labels per batch showed too).
_RUNS = (
    select(runs.c.id, runs.c.task_id, *(runs.c[c] for c in RUN_COLUMNS))
    .where(runs.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(runs.c.id)
)
_RUNS_FOR_UPDATE = _RUNS.with_for_update()
_UPDATE_RUN = (
    runs.update().where(runs.c.id == bindparam("b_id")).values({c: bindparam(f"b_{c}") for c in RUN_COLUMNS})
)
_UPDATE_TASK_STATUS = (
    tasks.update()
    .where(tasks.c.id == bindparam("b_task"), tasks.c.latest_run_id == bindparam("b_run"))
    .values(status=bindparam("b_status"), updated_at=bindparam("b_updated"))
)
_UPDATE_TASK_COUNTERS = (
    tasks.update()
    .where(tasks.c.id == bindparam("b_task"))
    .values(
        total_runs=tasks.c.total_runs + 1,
        successful_runs=tasks.c.successful_runs + bindparam("b_succeeded"),
        failed_runs=tasks.c.failed_runs + bindparam("b_failed"),
        last_run_duration=bindparam("b_duration"),
        last_error=bindparam("b_error"),
        updated_at=bindparam("b_updated"),
    )
)

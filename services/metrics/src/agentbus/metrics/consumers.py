"""JetStream consumers: run events become metrics; task/run deletions remove them.

Both are durable push consumers with a deliver group, shared by every copy of
the service, so each event is recorded by one copy. A message is acked only
after its rows are committed; a redelivery is harmless (ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from contextlib import suppress
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from agentbus.common import tracing
from agentbus.common.bus import guarded
from agentbus.common.db import is_poison
from agentbus.contracts import decode_event, subjects
from agentbus.contracts.codec import decoder
from agentbus.contracts.events import TERMINAL_EVENT_TYPES
from agentbus.contracts.messages import ResourceDeleted
from agentbus.metrics.recorder import metric_rows
from agentbus.metrics.store import MetricsStore

log = logging.getLogger(__name__)

BATCH_SIZE = 500
# At most one batch per LINGER_S while events keep coming (see `_write_forever`).
LINGER_S = 0.1
NAK_DELAY_S = 2


_deleted_decoder = decoder(ResourceDeleted)


async def durable_push_subscribe(
    js: JetStreamContext, subject: str, stream: str, durable: str, cb: Any, config: ConsumerConfig
) -> JetStreamContext.PushSubscription:
    """Bind to (or create) a shared durable push consumer, queue group named like the durable.

    Copies starting at once may race to create the consumer; the loser binds to
    the winner's on a retry.
    """
    for attempt in range(5):
        try:
            return await js.subscribe(
                subject,
                queue=durable,
                durable=durable,
                stream=stream,
                cb=cb,
                manual_ack=True,
                config=dataclasses.replace(config),  # subscribe() fills the config in; keep ours intact
            )
        except JetStreamError as exc:
            if attempt == 4:
                raise
            log.info("binding consumer %s failed (%s), retrying", durable, exc)
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def dead_letter(nc: Client, msg: Msg, exc: Exception, why: str = "undecodable") -> None:
    """Log a payload we must drop with its subject, and keep its bytes on `events.dead` for inspection."""
    # The driver's own message when there is one: SQLAlchemy's adds the whole statement.
    reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]  # header values are one line
    log.error("dropping %s message on %s: %s", why, msg.subject, reason)
    try:
        await nc.publish(
            subjects.EVENTS_DEAD,
            msg.data,
            headers={"Agentbus-Subject": msg.subject, "Agentbus-Reason": reason},
        )
    except Exception as pub_exc:
        log.warning("could not dead-letter a message from %s: %s", msg.subject, pub_exc)


async def settle(msg: Msg, ok: bool) -> None:
    """Ack, or nak with a delay so the message comes back later; a lost ack only means a redelivery."""
    try:
        await (msg.ack() if ok else msg.nak(delay=NAK_DELAY_S))
    except Exception as exc:
        log.debug("could not settle a message on %s: %s", msg.subject, exc)


TERMINAL_SUBJECTS = sorted(f"{subjects.EVENTS_RUN_PREFIX}.*.*.{t}" for t in TERMINAL_EVENT_TYPES)


async def narrow_existing(js: JetStreamContext, config: ConsumerConfig) -> None:
    """A consumer created before it was filtered to terminal events gets the filter (binding to an
    existing durable keeps its config as it is)."""
    try:
        info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.METRICS_EVENTS_CONSUMER)
    except NotFoundError:
        return
    if sorted(info.config.filter_subjects or []) == config.filter_subjects:
        return
    wanted = dataclasses.replace(info.config, filter_subject=None, filter_subjects=config.filter_subjects)
    await js.add_consumer(subjects.EVENTS_STREAM, config=wanted)
    log.info("consumer %s now takes terminal events only", subjects.METRICS_EVENTS_CONSUMER)


class EventsConsumer:
    """Callback queues messages; one writer task stores them in batches, one transaction per batch."""

    def __init__(self, nc: Client, js: JetStreamContext, store: MetricsStore) -> None:
        self._nc, self._js, self._store = nc, js, store
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PushSubscription | None = None

    async def start(self) -> None:
        # Only terminal events yield metrics: the server delivers those alone (a run's other events
        # cost this service nothing, nor an ack each).
        config = ConsumerConfig(
            ack_wait=30,
            max_ack_pending=20000,
            deliver_policy=DeliverPolicy.ALL,
            filter_subjects=TERMINAL_SUBJECTS,
        )
        await narrow_existing(self._js, config)
        self._sub = await durable_push_subscribe(
            self._js,
            subjects.EVENTS_RUN_ALL,
            subjects.EVENTS_STREAM,
            subjects.METRICS_EVENTS_CONSUMER,
            self._on_msg,
            config,
        )
        # Started after subscribing so a failed start leaves no task behind; early messages wait in the queue.
        self._writer = asyncio.create_task(self._write_forever(), name="metrics-writer")

    async def stop(self, timeout: float = 10) -> None:
        if self._sub is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._sub.drain(), timeout)
        # Store what was already received, so it does not wait out ack_wait on the server.
        with suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        if self._writer is not None:
            self._writer.cancel()
            with suppress(asyncio.CancelledError):
                await self._writer
        await self._store.close()

    async def _on_msg(self, msg: Msg) -> None:
        self._queue.put_nowait(msg)  # bounded by the consumer's max_ack_pending

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        began = float("-inf")
        while True:
            batch = [await self._queue.get()]
            # Under load (the last batch began under LINGER_S ago), wait out the rest of LINGER_S: the
            # events arriving meanwhile share this batch's transaction, thread hand-off and ack flush.
            # Events further apart than that are written as soon as they come.
            wait = began + LINGER_S - loop.time()
            if wait > 0 and self._queue.qsize() < BATCH_SIZE:
                await asyncio.sleep(wait)
            began = loop.time()
            while len(batch) < BATCH_SIZE and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._handle(batch)
            except Exception:  # never let the writer die; unsettled messages come back after ack_wait
                log.exception("metrics writer failed on a batch of %d messages", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _handle(self, batch: list[Msg]) -> None:
        if not tracing.enabled():
            await self._store_batch(batch)
            return
        # Tracing on: each event's recording is a span of its run's trace (the runner's header).
        spans = [
            tracing.begin(
                "metrics record", parent=m.headers, attributes={"messaging.destination.name": m.subject}
            )
            for m in batch
        ]
        try:
            await self._store_batch(batch)
        finally:
            for span in spans:
                if span is not None:
                    span.end()

    async def _store_batch(self, batch: list[Msg]) -> None:
        decoded: list[tuple[Msg, list[dict[str, Any]]]] = []
        for msg in batch:
            try:
                decoded.append((msg, metric_rows(decode_event(msg.data))))
            except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
                await dead_letter(self._nc, msg, exc)
                await settle(msg, True)
            except Exception as exc:  # pure code on the message's values (e.g. an int no float holds)
                await dead_letter(self._nc, msg, exc, why="unusable")
                await settle(msg, True)
        try:
            await self._store.insert([row for _, rows in decoded for row in rows])
        except Exception as exc:
            if is_poison(exc):
                await self._handle_one_by_one(decoded)
                return
            log.warning("database error, %d events come back in %ss: %s", len(decoded), NAK_DELAY_S, exc)
            ok = False
        else:
            ok = True
        for msg, _ in decoded:
            await settle(msg, ok)

    async def _handle_one_by_one(self, decoded: list[tuple[Msg, list[dict[str, Any]]]]) -> None:
        """One bad event must not hold back the batch it came with: store each alone."""
        for msg, rows in decoded:
            try:
                await self._store.insert(rows)
            except Exception as exc:
                if is_poison(exc):
                    await dead_letter(self._nc, msg, exc, why="unstorable")
                    await settle(msg, True)
                else:
                    log.warning("database error on %s, retrying in %ss: %s", msg.subject, NAK_DELAY_S, exc)
                    await settle(msg, False)
            else:
                await settle(msg, True)


class LifecycleConsumer:
    """`task.deleted` / `run.deleted`: delete the metrics of that task or run, then ack."""

    def __init__(self, nc: Client, js: JetStreamContext, store: MetricsStore) -> None:
        self._nc, self._js, self._store = nc, js, store
        self._sub: JetStreamContext.PushSubscription | None = None

    async def start(self) -> None:
        config = ConsumerConfig(
            ack_wait=30,
            max_ack_pending=1000,
            deliver_policy=DeliverPolicy.ALL,
            filter_subjects=[subjects.TASK_DELETED, subjects.RUN_DELETED],
        )
        self._sub = await durable_push_subscribe(
            self._js,
            subjects.TASK_DELETED,
            subjects.LIFECYCLE_STREAM,
            subjects.METRICS_LIFECYCLE_CONSUMER,
            guarded(subjects.LIFECYCLE_STREAM, self._on_msg),
            config,
        )

    async def stop(self, timeout: float = 10) -> None:
        if self._sub is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._sub.drain(), timeout)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            deleted = _deleted_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            await dead_letter(self._nc, msg, exc)
            await settle(msg, True)
            return
        if msg.subject == subjects.TASK_DELETED:
            kind, resource_id = "task", deleted.task_id
        elif deleted.run_id:
            kind, resource_id = "run", deleted.run_id
        else:
            log.warning("ignoring %s without a run_id (task %s)", msg.subject, deleted.task_id)
            await settle(msg, True)
            return
        try:
            count = await self._store.delete_resource(kind, resource_id)
        except Exception as exc:
            log.warning(
                "database error deleting %s %s, retrying in %ss: %s", kind, resource_id, NAK_DELAY_S, exc
            )
            await settle(msg, False)
            return
        log.info("deleted %d metrics of %s %s", count, kind, resource_id)
        await settle(msg, True)

"""Request/reply over core NATS, queue group "metrics" so every copy shares the load.

Requests are decoded strictly; an error is answered with a ServiceError and the
`Agentbus-Error: 1` header, never left to time out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentbus.common.db import is_poison
from agentbus.contracts import encode, subjects
from agentbus.contracts.codec import decoder
from agentbus.contracts.messages import (
    ERROR_HEADER,
    MetricsGet,
    MetricsQuery,
    MetricsSummaryQuery,
    Ping,
    Pong,
    ServiceError,
)
from agentbus.metrics import __version__
from agentbus.metrics.store import MetricsStore

log = logging.getLogger(__name__)

QUEUE_GROUP = "metrics"
MAX_LIMIT = 1000
MAX_SKIP = 2**63 - 1  # the largest OFFSET the databases take
MAX_CONCURRENT = 64  # requests in flight per copy; beyond that NATS buffers them


class RequestError(Exception):
    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.error = ServiceError(status_code=status_code, detail=detail)


_decoders = {tp: decoder(tp) for tp in (MetricsQuery, MetricsGet, MetricsSummaryQuery, Ping)}


def _decode(tp: Any, data: bytes) -> Any:
    try:
        return _decoders[tp].decode(data)
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"invalid {tp.__name__}: {exc}") from None


class RequestHandlers:
    def __init__(self, nc: Client, store: MetricsStore, instance: str) -> None:
        self._nc, self._store, self._instance = nc, store, instance
        self._subs: list[Subscription] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    async def start(self) -> None:
        routes: dict[str, Callable[[bytes], Awaitable[Any]]] = {
            subjects.METRICS_QUERY: self.query,
            subjects.METRICS_GET: self.get,
            subjects.METRICS_RUN_SUMMARY: self.run_summary,
            subjects.METRICS_TASK_SUMMARY: self.task_summary,
            subjects.METRICS_PING: self.ping,
        }
        for subject, handler in routes.items():
            self._subs.append(
                await self._nc.subscribe(subject, queue=QUEUE_GROUP, cb=self._dispatcher(handler))
            )

    async def stop(self, timeout: float = 10) -> None:
        for sub in self._subs:
            with suppress(Exception):
                await asyncio.wait_for(sub.drain(), timeout)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=timeout)

    def _dispatcher(self, handler: Callable[[bytes], Awaitable[Any]]) -> Callable[[Msg], Awaitable[None]]:
        # nats.py runs one callback at a time per subscription: answer in tasks so a slow query
        # does not hold up the others, with a bound on how many run at once.
        async def cb(msg: Msg) -> None:
            await self._slots.acquire()
            task = asyncio.create_task(self._answer(handler, msg))
            self._inflight.add(task)
            task.add_done_callback(self._done)

        return cb

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _answer(self, handler: Callable[[bytes], Awaitable[Any]], msg: Msg) -> None:
        headers = None
        try:
            reply = await handler(msg.data)
        except RequestError as exc:
            reply, headers = exc.error, {ERROR_HEADER: "1"}
        except Exception as exc:
            headers = {ERROR_HEADER: "1"}
            if is_poison(exc):  # a value the database cannot take (a NUL in a PostgreSQL string)
                log.warning("request on %s refused by the database: %s", msg.subject, type(exc).__name__)
                reply = ServiceError(status_code=400, detail="invalid request: a value the store cannot take")
            else:
                log.exception("request on %s failed", msg.subject)
                reply = ServiceError(status_code=503, detail="metrics store unavailable")
        if not msg.reply:
            return
        try:
            await self._nc.publish(msg.reply, encode(reply), headers=headers)
        except Exception as exc:
            log.warning("could not reply on %s: %s", msg.subject, exc)

    async def query(self, data: bytes) -> Any:
        q = _decode(MetricsQuery, data)
        if not 0 <= q.skip <= MAX_SKIP:
            raise RequestError(400, f"skip must be between 0 and {MAX_SKIP}")
        if not 0 <= q.limit <= MAX_LIMIT:
            raise RequestError(400, f"limit must be between 0 and {MAX_LIMIT}")
        return await self._store.page(q)

    async def get(self, data: bytes) -> Any:
        q = _decode(MetricsGet, data)
        metric = await self._store.get(q.metric_id)
        if metric is None:
            raise RequestError(404, f"metric {q.metric_id} not found")
        return metric

    async def run_summary(self, data: bytes) -> Any:
        q = _decode(MetricsSummaryQuery, data)
        if not q.run_id:
            raise RequestError(400, "run_id is required")
        return await self._store.summary("run", q.run_id)

    async def task_summary(self, data: bytes) -> Any:
        q = _decode(MetricsSummaryQuery, data)
        if not q.task_id:
            raise RequestError(400, "task_id is required")
        return await self._store.summary("task", q.task_id)

    async def ping(self, data: bytes) -> Any:
        if data:  # a bare ping with no body is fine too
            _decode(Ping, data)
        return Pong(service="metrics", instance=self._instance, version=__version__)

"""Connecting to NATS and provisioning the JetStream assets every service relies on.

Each service ensures the streams it touches at start-up; the calls are
idempotent, so starting services in any order, or many copies at once, works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError

from agentbus.contracts import subjects

log = logging.getLogger(__name__)

DAY = 24 * 3600
T = TypeVar("T")


async def connect(url: str, name: str) -> Client:
    """Connect, and keep reconnecting forever: a broker restart must never kill a service."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnected() -> None:
        log.warning("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        servers=url.split(","),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        pending_size=64 * 1024 * 1024,
    )


async def connect_with_retry(url: str, name: str, attempts: int = 60) -> Client:
    """The broker may start after us (compose, k8s): retry the first connection for a while."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return await connect(url, name)
        except Exception as exc:  # nats raises several unrelated types here
            last = exc
            log.info("waiting for nats at %s: %s", url, exc)
            await asyncio.sleep(1)
    raise RuntimeError(f"could not connect to NATS at {url}: {last}")


def transient(exc: BaseException) -> bool:
    """An error JetStream answers while it is not ready yet (a cluster still electing its leader,
    a server just started): worth another try, unlike a refused request."""
    if isinstance(exc, NatsTimeoutError | TimeoutError | NoRespondersError):
        return True
    return (
        isinstance(exc, APIError)
        and not isinstance(exc, BadRequestError | NotFoundError)
        and (exc.code is None or exc.code >= 500)
    )


async def retrying_setup(what: str, setup: Callable[[], Awaitable[T]], attempts: int = 30) -> T:
    """`setup()`, tried again for a while (0.5 s apart) on a transient error."""
    for attempt in range(1, attempts + 1):
        try:
            return await setup()
        except Exception as exc:
            if attempt == attempts or not transient(exc):
                raise
            log.info("%s: JetStream not ready (%r); retrying", what, exc)
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    async def ensure() -> None:
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Exists with another config (an older version of ours): bring it up to date.
            await js.update_stream(config)

    await retrying_setup(f"stream {config.name}", ensure)


async def ensure_streams(js: JetStreamContext, replicas: int = 1, events_max_age_s: float = 7 * DAY) -> None:
    await _ensure_stream(
        js,
        StreamConfig(
            name=subjects.RUN_COMMANDS_STREAM,
            subjects=[subjects.RUN_START_KINDS, subjects.RUN_WAKE_KINDS],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120,
        ),
    )
    await _ensure_stream(
        js,
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[subjects.EVENTS_RUN_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=events_max_age_s,
            duplicate_window=120,
            discard=DiscardPolicy.OLD,
        ),
    )
    await _ensure_stream(
        js,
        StreamConfig(
            name=subjects.LIFECYCLE_STREAM,
            subjects=[subjects.TASK_DELETED, subjects.RUN_DELETED],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=events_max_age_s,
        ),
    )


async def run_state_kv(js: JetStreamContext, replicas: int = 1):  # -> KeyValue
    async def setup():  # type: ignore[no-untyped-def]
        try:
            return await js.key_value(subjects.RUN_STATE_BUCKET)
        except (NotFoundError, Exception):
            return await js.create_key_value(
                KeyValueConfig(
                    bucket=subjects.RUN_STATE_BUCKET,
                    history=1,
                    storage=StorageType.FILE,
                    replicas=replicas,
                    ttl=30 * DAY,
                )
            )

    return await retrying_setup(f"bucket {subjects.RUN_STATE_BUCKET}", setup)


async def artifacts_store(js: JetStreamContext, replicas: int = 1):  # -> ObjectStore
    async def setup():  # type: ignore[no-untyped-def]
        try:
            return await js.object_store(subjects.ARTIFACTS_BUCKET)
        except (NotFoundError, Exception):
            return await js.create_object_store(
                subjects.ARTIFACTS_BUCKET,
                ObjectStoreConfig(storage=StorageType.FILE, replicas=replicas),
            )

    return await retrying_setup(f"object store {subjects.ARTIFACTS_BUCKET}", setup)


def guarded(subject_hint: str, handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Wrap a subscription callback so one bad message is logged and never kills the service."""

    async def cb(msg) -> None:  # type: ignore[no-untyped-def]
        try:
            await handler(msg)
        except Exception:
            log.exception("handler for %s failed on a message on %s", subject_hint, msg.subject)

    return cb

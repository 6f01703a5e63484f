"""Connecting to NATS and provisioning the JetStream assets every service relies on.

Each service ensures the streams it touches at start-up; the calls are
idempotent, so starting services in any order, or many copies at once, works.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
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

from agentbus.common.broker import inbox_prefix
from agentbus.common.settings import NatsAccess, mask_url
from agentbus.contracts import subjects

log = logging.getLogger(__name__)

DAY = 24 * 3600
T = TypeVar("T")


def tls_context(access: NatsAccess) -> ssl.SSLContext | None:
    """A context that verifies the broker against NATS_TLS_CA (and offers NATS_TLS_CERT), or None
    when neither is set (a `tls://` URL then verifies against the system's CAs)."""
    if access.tls_ca is None and access.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=access.tls_ca)
    if access.tls_cert is not None:
        context.load_cert_chain(access.tls_cert, access.tls_key)
    return context


async def connect(url: str, name: str, service: str, access: NatsAccess | None = None) -> Client:
    """Connect as `service` (its user, its own inbox prefix), and keep reconnecting forever: a
    broker restart must never kill a service."""
    access = access or NatsAccess()

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
        inbox_prefix=inbox_prefix(service),
        user=access.user,
        password=access.password,
        tls=tls_context(access),
    )


async def connect_with_retry(
    url: str, name: str, service: str, access: NatsAccess | None = None, attempts: int = 60
) -> Client:
    """The broker may start after us (compose, k8s): retry the first connection for a while."""
    last: Exception | None = None
    shown = ",".join(mask_url(u) or "***" for u in url.split(","))
    for _ in range(attempts):
        try:
            return await connect(url, name, service, access)
        except Exception as exc:  # nats raises several unrelated types here
            last = exc
            log.info("waiting for nats at %s: %s: %s", shown, type(exc).__name__, exc)
            await asyncio.sleep(1)
    raise RuntimeError(f"could not connect to NATS at {shown}: {type(last).__name__}: {last}")


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


async def _ensure_stream(js: JetStreamContext, config: StreamConfig, update: bool) -> None:
    async def ensure() -> None:
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Exists with another config (an older version of ours): the gateway brings it up to
            # date; the broker lets no other service change a stream (agentbus.common.broker).
            if update:
                await js.update_stream(config)
            else:
                log.info("stream %s exists with another configuration; left as it is", config.name)

    await retrying_setup(f"stream {config.name}", ensure)


async def ensure_streams(
    js: JetStreamContext, replicas: int = 1, events_max_age_s: float = 7 * DAY, update: bool = False
) -> None:
    """Create the streams that do not exist; `update`: also bring existing ones up to date."""
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
        update,
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
        update,
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
        update,
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

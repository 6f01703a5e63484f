"""The gateway's side of NATS: commands to runners, decisions, metrics queries, readiness pings."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from agentbus.common import bus as common_bus
from agentbus.common.settings import NatsAccess
from agentbus.contracts import Pong, ResourceDeleted, RunControl, RunStart, RunWake, encode, subjects
from agentbus.contracts.codec import decoder
from agentbus.contracts.messages import ERROR_HEADER, Ping, ServiceError
from agentbus.gateway.errors import ServiceUnavailable, UpstreamError

log = logging.getLogger(__name__)

_pong = decoder(Pong)
_service_error = decoder(ServiceError)


# The statuses another service's error answer may be passed on as.
_ERROR_STATUSES = frozenset(status.value for status in HTTPStatus if 400 <= status.value <= 599)


class Bus:
    """Built by the app factory, connected in the lifespan (`open`)."""

    nc: Client
    js: JetStreamContext
    kv: Any  # the run-state KV bucket (checkpoints, stored decisions)
    objects: Any  # the artifacts object store

    def __init__(
        self, url: str, name: str, replicas: int, timeout: float, access: NatsAccess | None = None
    ) -> None:
        self.url = url
        self.name = name
        self.replicas = replicas
        self.timeout = timeout
        self.access = access

    async def open(self) -> None:
        self.nc = await common_bus.connect_with_retry(self.url, self.name, "gateway", self.access)
        self.js = self.nc.jetstream()
        # The gateway brings streams up to date after an upgrade; the others only create them.
        await common_bus.ensure_streams(self.js, replicas=self.replicas, update=True)
        self.kv = await common_bus.run_state_kv(self.js, replicas=self.replicas)
        self.objects = await common_bus.artifacts_store(self.js, replicas=self.replicas)

    @property
    def max_payload(self) -> int:
        """The largest message the broker takes (its `max_payload`, 1 MiB by default)."""
        return self.nc.max_payload

    @property
    def connected(self) -> bool:
        return hasattr(self, "nc") and self.nc.is_connected

    async def missing_assets(self, timeout: float = 1.0) -> list[str]:
        """The streams, buckets and the durable consumer the gateway needs that the broker does
        not have (or does not answer for within `timeout`); none while disconnected (the broker
        check says so)."""
        if not self.connected:
            return []
        js = self.nc.jetstream(timeout=timeout)
        streams = [
            subjects.RUN_COMMANDS_STREAM,
            subjects.EVENTS_STREAM,
            subjects.LIFECYCLE_STREAM,
            f"KV_{subjects.RUN_STATE_BUCKET}",
            f"OBJ_{subjects.ARTIFACTS_BUCKET}",
        ]

        async def absent(name: str, look: Any) -> str | None:
            try:
                await look
                return None
            except Exception:  # not found, or no answer: either way it cannot be relied on
                return name

        found = await asyncio.gather(
            *(absent(f"stream {name}", js.stream_info(name)) for name in streams),
            absent(
                f"consumer {subjects.GATEWAY_EVENTS_CONSUMER}",
                js.consumer_info(subjects.EVENTS_STREAM, subjects.GATEWAY_EVENTS_CONSUMER),
            ),
        )
        return [name for name in found if name]

    async def close(self) -> None:
        if hasattr(self, "nc") and not self.nc.is_closed:
            await self.nc.drain()

    async def start_run(self, cmd: RunStart) -> None:
        """Store the run's record for the runners (`<run_id>.start`), then queue it.

        A runner acts only on a run whose record is stored: a start or wake message is just a
        pointer to it, so a message naming a run the gateway never created is dropped. Routed by
        agent kind: only runners serving it pull it. The message id makes a retried publish of the
        same run a no-op on the server.
        """
        payload = encode(cmd)
        await self.kv.put(subjects.start_key(cmd.run_id), payload)
        await self.js.publish(
            subjects.run_start(cmd.agent), payload, headers={"Nats-Msg-Id": f"start:{cmd.run_id}"}
        )

    async def decide(self, control: RunControl, agent: str, task_id: str, wake: bool = True) -> None:
        """Store the decision first (a runner that takes the run later applies it), then announce it:
        to the runner holding the run (core `run.control`), and as a wake on the work queue for a run
        parked while it waits (any runner serving the kind takes it up). `wake=False` for a run never
        queued (held): a wake would name a run without a record."""
        control.decided_at = control.decided_at or datetime.now(UTC)
        cancel = control.kind == "cancel"
        key = subjects.cancel_key(control.run_id) if cancel else subjects.decision_key(control.run_id)
        payload = encode(control)
        await self.kv.put(key, payload)
        await self.nc.publish(subjects.run_control(control.run_id), payload)
        if not wake:
            return
        reason = "cancel" if cancel else "decision"
        message = RunWake(run_id=control.run_id, task_id=task_id, reason=reason)
        # One wake per decision: a retried or re-handed decision within the server's duplicate
        # window is dropped there; a later duplicate only finds the run no longer parked.
        msg_id = f"wake:{control.run_id}:{reason}:{control.plan_version or 0}"
        await self.js.publish(subjects.run_wake(agent), encode(message), headers={"Nats-Msg-Id": msg_id})

    async def resource_deleted(self, task_id: str, run_id: str | None = None) -> None:
        subject = subjects.RUN_DELETED if run_id else subjects.TASK_DELETED
        await self.js.publish(subject, encode(ResourceDeleted(task_id=task_id, run_id=run_id)))

    async def request(self, subject: str, payload: Any) -> bytes:
        """A request/reply call to another service; its errors come back as HTTP errors."""
        try:
            msg = await self.nc.request(subject, encode(payload), timeout=self.timeout)
        except (TimeoutError, NoRespondersError, NatsTimeoutError) as exc:
            raise ServiceUnavailable(f"no answer on {subject}: is the service running?") from exc
        if msg.headers and msg.headers.get(ERROR_HEADER):
            try:
                err = _service_error.decode(msg.data)
            except msgspec.DecodeError:
                err = ServiceError(502, f"undecodable error answer on {subject}")
            if err.status_code not in _ERROR_STATUSES:  # passed on as the HTTP status: a known error one
                err = ServiceError(502, f"error answer on {subject} with status {err.status_code}")
            raise UpstreamError(err.status_code, err.detail or HTTPStatus(err.status_code).phrase)
        return msg.data

    async def ping(self, subject: str, timeout: float = 1.0) -> Pong | None:
        try:
            msg = await self.nc.request(subject, encode(Ping()), timeout=timeout)
            return _pong.decode(msg.data)
        except Exception:
            return None

    async def delete_artifacts(self, run_id: str, names: list[str]) -> None:
        for name in names:
            try:
                await self.objects.delete(f"{run_id}/{name}")
            except Exception as exc:  # already gone is fine
                log.debug("artifact %s/%s not deleted: %s", run_id, name, exc)

    async def read_artifact(self, run_id: str, name: str) -> bytes:
        result = await self.objects.get(f"{run_id}/{name}")
        return result.data

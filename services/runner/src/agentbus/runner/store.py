"""Durable run state: retried bus writes and the per-run checkpoint in JetStream KV."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal, NamedTuple, TypeVar

import msgspec
import nats.errors
import nats.js.errors

from agentbus.contracts import RunControl, RunStart, encode, subjects
from agentbus.contracts.codec import decoder
from agentbus.runner.agents.base import Usage

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors a broker restart or a leader election produces; anything else is a real error.
TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.FlushTimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


class BusError(Exception):
    """NATS stayed unreachable through every retry; the run is handed back, not failed."""


class RunLostError(Exception):
    """Another runner has moved this run's checkpoint on: it holds the run now, so we stop quietly."""


class RunDeletedError(RunLostError):
    """The run's checkpoint was deleted under us (the run was deleted): drop the work for good."""


class UnusableRunError(Exception):
    """What is stored about the run does not decode (its record or its checkpoint): no runner can
    act on it. The runner that finds it ends the run (`failure`, fenced by the checkpoint's
    revision) and drops its work; the gateway's reaper does the same for one it misses.

    `checkpoint`: the checkpoint when it did decode (the record did not)."""

    def __init__(self, message: str, checkpoint: Checkpoint | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


async def retrying(op: Callable[[], Awaitable[T]], what: str, attempts: int = 8) -> T:
    """Run `op`, retrying transient NATS errors with exponential backoff (about 30 s in all).

    Only for idempotent operations: event publishes carry a Nats-Msg-Id, KV writes compare revisions.
    """
    delay = 0.1
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except TRANSIENT as exc:
            if attempt == attempts:
                raise BusError(f"{what}: gave up after {attempts} attempts: {exc!r}") from exc
            log.warning("%s failed (%r), retry %d in %.1fs", what, exc, attempt, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


Phase = Literal["new", "planning", "awaiting_approval", "executing", "finished"]


class Checkpoint(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Everything another runner needs to continue a run exactly where it stopped."""

    phase: Phase = "new"
    seq: int = 0  # seq of the last published event
    plan: dict[str, Any] | None = None
    steps_done: int = 0
    outputs: list[Any] = msgspec.field(default_factory=list)
    feedback: str | None = None
    started_at: datetime | None = None  # timestamp of the first event
    approval_started_at: datetime | None = None
    approval_wait: float | None = None  # seconds waited for the human, once decided
    usage: Usage | None = None
    runner_id: str = ""
    # The stream sequence of the work message whose holder owns the run (a start, or a wake that
    # claimed it); 0 in checkpoints written before holders were recorded. A delivery of any other
    # message while the run is not parked is stale and dropped.
    holder: int = 0
    parked: bool = False  # waiting for a decision or its deadline, held by no runner
    # Plan revisions: the version of the current plan, the plans sent back ({"version", "plan",
    # "feedback"}), and the time waited for the human in the rounds before this one.
    plan_version: int = 1
    revisions: list[dict[str, Any]] = msgspec.field(default_factory=list)
    approval_wait_before: float = 0.0
    artifacts: dict[str, int] = msgspec.field(default_factory=dict)  # name -> size, for the run's limit
    time_to_plan: float | None = None  # seconds from the first event (analysis_start) to the first plan
    v: int = 1


_checkpoint = decoder(Checkpoint)
_control = decoder(RunControl)
_start = decoder(RunStart)


class Stored(NamedTuple):
    """What is stored about a run when a runner takes its work message."""

    start: RunStart | None  # the run as the gateway created it
    start_raw: bytes | None
    checkpoint: Checkpoint | None
    cancel: RunControl | None
    decision: RunControl | None


class RunStore:
    """One run's keys in the run-state bucket. Checkpoint writes are compare-and-set on the revision,
    so a runner that lost the run (it was redelivered elsewhere) cannot overwrite the new holder's state."""

    def __init__(self, kv: Any, run_id: str) -> None:
        self.kv = kv
        self.run_id = run_id
        self.revision: int | None = None

    async def _get(self, key: str) -> bytes | None:
        async def op() -> bytes | None:
            try:
                entry = await self.kv.get(key)
            except nats.js.errors.NotFoundError:  # also KeyDeleted
                return None
            return entry.value

        return await retrying(op, f"read {key}")

    async def load_all(self) -> Stored:
        """The run's record, checkpoint and stored cancel in one round trip, and the stored decision
        of a run that waits for one.

        Raises UnusableRunError for a record or checkpoint that does not decode.
        """
        raw, cp, cancel = await asyncio.gather(
            self._get(subjects.start_key(self.run_id)), self._load_raw(), self.stored_cancel()
        )
        try:
            checkpoint = None if cp is None else _checkpoint.decode(cp)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UnusableRunError(f"run {self.run_id}: its checkpoint does not decode: {exc}") from None
        try:
            start = None if raw is None else _start.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UnusableRunError(
                f"run {self.run_id}: its stored record does not decode: {exc}", checkpoint
            ) from None
        if start is not None and start.run_id != self.run_id:
            raise UnusableRunError(
                f"run {self.run_id}: its stored record names run {start.run_id}", checkpoint
            )
        # Only a run waiting for a decision has one to read (a run taken at its start has none yet).
        waiting = checkpoint is not None and checkpoint.phase == "awaiting_approval"
        decision = await self.stored_decision() if waiting else None
        return Stored(start, raw, checkpoint, cancel, decision)

    async def fence(self, head: bytes) -> bool:
        """Replace the checkpoint with `head`, compare-and-set on the revision last read; False when
        someone wrote it meanwhile (they act on the run, or ended it)."""
        key = subjects.state_key(self.run_id)
        try:
            if self.revision is None:
                await self.kv.create(key, head)
            else:
                await self.kv.update(key, head, last=self.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def _load_raw(self) -> bytes | None:
        key = subjects.state_key(self.run_id)

        async def op() -> bytes | None:
            try:
                entry = await self.kv.get(key)
            except nats.js.errors.NotFoundError:
                self.revision = None
                return None
            self.revision = entry.revision
            return entry.value

        return await retrying(op, f"read {key}")

    async def save(self, cp: Checkpoint) -> None:
        key, data = subjects.state_key(self.run_id), encode(cp)

        async def op() -> int:
            try:
                if self.revision is None:
                    return await self.kv.create(key, data)
                return await self.kv.update(key, data, last=self.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                # Our own earlier attempt landed before a reconnect, or someone else wrote.
                try:
                    entry = await self.kv.get(key)
                except nats.js.errors.NotFoundError:
                    raise RunDeletedError(f"run {self.run_id}: its state was deleted") from None
                if entry.value == data:
                    return entry.revision
                raise RunLostError(f"run {self.run_id} was taken over by another runner") from None

        self.revision = await retrying(op, f"checkpoint {key}")

    async def control(self, key: str) -> RunControl | None:
        """A stored decision or cancel; an unreadable one is logged and ignored."""
        raw = await self._get(key)
        if raw is None:
            return None
        try:
            return _control.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("ignoring undecodable %s: %s", key, exc)
            return None

    async def stored_cancel(self) -> RunControl | None:
        return await self.control(subjects.cancel_key(self.run_id))

    async def stored_decision(self) -> RunControl | None:
        ctl = await self.control(subjects.decision_key(self.run_id))
        return ctl if ctl is not None and ctl.kind in ("approve", "reject") else None

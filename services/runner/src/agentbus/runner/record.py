"""A run's durable record: its checkpoint, its control flags, and emitting its events.

Every event gets the next per-run seq, is published with a Nats-Msg-Id (so a
retry is deduplicated) and is then checkpointed, so any runner can continue the
run at the next seq.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js.api import ObjectMeta

from agentbus.common import tracing
from agentbus.contracts import (
    ArtifactCreated,
    Cancelled,
    Event,
    Failure,
    PlanReady,
    RunControl,
    RunStart,
    RunStats,
    encode,
    subjects,
)
from agentbus.contracts.events import ArtifactData, CancelledData, FailureData
from agentbus.runner.agents import AgentContext, ArtifactLimitError
from agentbus.runner.budget import Overrun
from agentbus.runner.lifelog import life
from agentbus.runner.store import Checkpoint, RunStore, retrying

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def since(then: datetime | None, now: datetime) -> float:
    return 0.0 if then is None else max(0.0, (now - then).total_seconds())


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


class RunRecord:
    """The state of one held run and the only way its events are written."""

    def __init__(
        self,
        start: RunStart,
        *,
        js: Any,
        kv: Any,
        obs: Any,
        runner_id: str,
        settings: Any = None,
        token: int = 0,
        store: RunStore | None = None,
    ) -> None:
        self.start = start
        self.token = token  # the stream sequence of the work message this execution holds
        self.js = js
        self.obs = obs
        self.runner_id = runner_id
        self.settings = settings
        self.store = store or RunStore(kv, start.run_id)
        self.cp = Checkpoint(runner_id=runner_id, holder=token)
        self.ctx = AgentContext(start, artifact_writer=self._write_artifact, settings=settings)
        # Events an agent causes (artifacts, streamed progress) may come from concurrent agent tasks:
        # one at a time, so each gets its own seq.
        self._agent_emit = asyncio.Lock()
        self.cancel_reason: str | None = None
        self.overrun: Overrun | None = None  # the run passed its budget: it ends `failure`
        self.handing_back = False  # the runner is stopping and gives this run to another runner
        self.waiting_for_human = False
        self._decision: asyncio.Future[RunControl] | None = None
        self._prefetched: list[RunControl | None] | None = None  # stored cancel and decision
        self._saving: asyncio.Future[None] | None = None  # the checkpoint being written

    @property
    def run_id(self) -> str:
        return self.start.run_id

    @property
    def finished(self) -> bool:
        return self.cp.phase == "finished"

    # --- called from the runner's control subscription -------------------------------------------

    def request_cancel(self, reason: str | None) -> bool:
        """Record a cancel; True when the caller must now cancel this run's task."""
        if self.finished or self.cancel_reason is not None:
            return False
        self.cancel_reason = reason or "cancelled by user"
        return True

    def hand_back(self) -> None:
        """Record that the runner is stopping; the caller then cancels this run's task."""
        self.handing_back = True

    def _check_interrupted(self, terminal: bool = False, cancelled_event: bool = False) -> None:
        """Raise CancelledError when a cancel or hand-back was requested, or the run passed its budget
        (only its `failure` may follow).

        The flags are set next to task.cancel() because Python 3.11's asyncio.wait_for (used by
        nats-py requests) can swallow a cancellation that races a completing reply; checking them at
        every event and wait makes such a cancel take effect at the next one.
        """
        if self.cancel_reason is not None and not cancelled_event:
            raise asyncio.CancelledError
        if (self.handing_back or self.overrun is not None) and not terminal:
            raise asyncio.CancelledError

    def offer_decision(self, ctl: RunControl) -> None:
        """Only the first decision of a wait counts; later, unexpected or stale ones are ignored.

        A decision names the plan version it was made on: the stored decision that sent version 1
        back for revision must not also decide version 2.
        """
        stale = (
            ctl.kind != "cancel" and ctl.plan_version is not None and ctl.plan_version != self.cp.plan_version
        )
        if not stale and self._decision is not None and not self._decision.done():
            self._decision.set_result(ctl)

    async def _write_artifact(self, name: str, data: bytes, content_type: str) -> None:
        async with self._agent_emit:
            await self._store_artifact(name, data, content_type)

    async def _store_artifact(self, name: str, data: bytes, content_type: str) -> None:
        key = f"{self.run_id}/{name}"
        limit = getattr(self.settings, "artifact_max_bytes", None)
        run_limit = getattr(self.settings, "run_artifacts_max_bytes", None)
        if limit is not None and len(data) > limit:
            raise ArtifactLimitError(
                f"artifact {name!r} is {_size(len(data))}, over the per-file limit of {_size(limit)} "
                "(RUNNER_ARTIFACT_MAX_BYTES)"
            )
        sizes = {**self.cp.artifacts, name: len(data)}  # a rewrite replaces the earlier bytes
        if run_limit is not None and sum(sizes.values()) > run_limit:
            raise ArtifactLimitError(
                f"artifact {name!r} ({_size(len(data))}) would take this run's artifacts to "
                f"{_size(sum(sizes.values()))}, over the per-run limit of {_size(run_limit)} "
                "(RUNNER_RUN_ARTIFACTS_MAX_BYTES)"
            )

        async def put() -> Any:
            meta = ObjectMeta(name=key, description=content_type, headers={"Content-Type": [content_type]})
            return await self.obs.put(key, data, meta=meta)

        await retrying(put, f"store artifact {key}")
        await self._emit(
            ArtifactCreated,
            ArtifactData(name=name, size=len(data), content_type=content_type),
            f"Artifact {name} stored",
            artifacts=sizes,
        )

    # --- events ------------------------------------------------------------------------------------

    async def _fail(self, error: str, **fields: Any) -> None:
        """End the run `failure`; `fields`: FailureData's other fields (reason, tokens, cost_usd)."""
        await self._finish(
            Failure, lambda s: FailureData(error=error, stats=s, **fields), f"Run failed: {error}"
        )

    async def _cancelled(self) -> None:
        reason = self.cancel_reason or "cancelled by user"
        await self._finish(
            Cancelled, lambda s: CancelledData(reason=reason, stats=s), f"Run cancelled: {reason}"
        )

    async def _finish(
        self, cls: type[Event], data: Callable[[RunStats], Any], message: str, **changes: Any
    ) -> None:
        await self._emit(cls, data, message, phase="finished", **changes)

    def _stats(self, cp: Checkpoint, now: datetime) -> RunStats:
        wait = cp.approval_wait
        if wait is None and cp.approval_started_at is not None:  # ended while waiting for the human
            wait = round(cp.approval_wait_before + since(cp.approval_started_at, now), 3)
        elif wait is None and cp.approval_wait_before:  # ended while revising the plan
            wait = round(cp.approval_wait_before, 3)
        usage = cp.usage
        return RunStats(
            duration=round(since(cp.started_at, now), 3),
            steps=cp.steps_done,
            approval_wait=wait,
            tokens_prompt=usage.prompt_tokens if usage else None,
            tokens_completion=usage.completion_tokens if usage else None,
            cost_usd=usage.cost_usd if usage else None,
            agent=self.start.agent,
            time_to_plan=cp.time_to_plan,
        )

    async def _emit(
        self,
        cls: type[Event],
        data: Any,
        message: str,
        now: datetime | None = None,
        **changes: Any,
    ) -> None:
        """Publish the next event, then checkpoint; `data` may be a factory taking the run's stats."""
        self._check_interrupted(terminal=changes.get("phase") == "finished", cancelled_event=cls is Cancelled)
        now = now or utcnow()
        usage = msgspec.structs.replace(self.ctx.usage) if self.ctx.usage else None
        cp = msgspec.structs.replace(
            self.cp,
            seq=self.cp.seq + 1,
            started_at=self.cp.started_at or now,
            runner_id=self.runner_id,
            usage=usage,
            parked=False,
            **changes,
        )
        if cls is PlanReady and cp.time_to_plan is None:
            cp = msgspec.structs.replace(cp, time_to_plan=round(since(cp.started_at, now), 3))
        if callable(data):
            data = data(self._stats(cp, now))
        fields: dict[str, Any] = {} if data is None else {"data": data}
        event = cls(
            id=f"{self.runner_id}/{uuid.uuid4().hex}",  # the holder's name first: see _publish_and_save
            seq=cp.seq,
            timestamp=now,
            task_id=self.start.task_id,
            run_id=self.run_id,
            message=message,
            **fields,
        )
        write = asyncio.ensure_future(self._publish_and_save(event, cp))
        # Never abandon a write half-way: the next event (e.g. `cancelled`) must get the next seq,
        # not one the server would drop as a duplicate. A cancel is re-raised once it is done.
        interrupted = False
        while not write.done():
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                interrupted = True
        write.result()
        if interrupted:
            raise asyncio.CancelledError

    async def _publish_and_save(self, event: Event, cp: Checkpoint) -> None:
        """Publish the event, then checkpoint it: in that order, so a checkpoint never names an event
        that was not published (a crash in between republishes it under the same message id).

        Pipelined: a non-terminal event's checkpoint is written in the background while the agent goes
        on, and the next event's publish overlaps it; the next checkpoint waits for it (they are
        compare-and-set on its revision), and so does everything that must see it stored: the
        terminal event and a wait for a human (`durable()`). A checkpoint already written that
        failed (the run was taken over or deleted) stops the run before the next publish.
        """
        saving = self._saving
        if saving is not None and saving.done():
            saving.result()  # raises RunLostError / BusError of the last checkpoint
        event_type = type(event).__struct_config__.tag
        subject = subjects.run_event(self.start.task_id, self.run_id, str(event_type))
        payload = encode(event)
        headers = {"Nats-Msg-Id": subjects.event_msg_id(self.run_id, event.seq)}
        if tracing.enabled():  # the metrics service's recording joins the run's trace
            tracing.headers(headers)
        tries = 0

        def publish() -> Any:
            nonlocal tries
            tries += 1
            return self.js.publish(subject, payload, headers=headers)

        ack = await retrying(publish, f"publish {event_type} #{event.seq}")
        if ack.duplicate and tries == 1:
            # Another event already holds this seq's message id (a lost holder's, or one this runner
            # never published): ours was dropped as its duplicate. Publish it under a message id of
            # its own, so the gateway sees both and keeps the holder's (named in the checkpoint).
            log.warning(
                "run %s: seq %d was taken by another event; publishing ours beside it", self.run_id, event.seq
            )
            alt = {**headers, "Nats-Msg-Id": f"{headers['Nats-Msg-Id']}:{self.runner_id}"}
            await retrying(
                lambda: self.js.publish(subject, payload, headers=alt),
                f"publish {event_type} #{event.seq} again",
            )
        life(str(event_type), event, self.start)
        await self.durable()
        if cp.phase == "finished":
            await self.store.save(cp)  # finished only once its checkpoint is stored
            self.cp = cp
            return
        self.cp = cp
        self._saving = asyncio.ensure_future(self.store.save(cp))
        self._saving.add_done_callback(_retrieved)

    async def durable(self) -> None:
        """Wait for the checkpoint in flight, if any (raises what it raised)."""
        saving = self._saving
        if saving is not None:
            await asyncio.shield(saving)  # a cancelled caller must not cancel the write
            if self._saving is saving:
                self._saving = None


def _retrieved(future: asyncio.Future[None]) -> None:
    # Its error is raised by the next event or wait; a run handed back never looks again.
    if not future.cancelled():
        future.exception()

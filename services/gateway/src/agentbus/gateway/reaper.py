"""Ends runs whose runner is gone and that no runner resumed: never `running` forever.

Runners announce the runs they hold on `run.heartbeat` every few seconds. A
`running` run that has not changed and has not been announced for
`reaper_after_s` (and this gateway has listened at least that long) is ended as
`failed` with a clear `error_message`. A run waiting for approval is parked, held
by no runner: it is only looked at once its deadline is `reaper_after_s` past
(the runners missed it): it gets a deadline wake first, and is ended if that too
goes unanswered for another `reaper_after_s`, as its `on_approval_timeout` (read
from its stored record) says where that needs no agent: `timeout` ends it
`timeout`, `reject` ends it `rejected`; `approve` would need a runner to execute
the plan, so as a last resort it ends `failed` (as does a run whose record does
not decode, or whose checkpoint does not say it waits). Ending a run:

1. its checkpoint in KV is replaced, compare-and-set on the revision read, by a
   `finished` head, so a runner that later takes the run (or a lost holder that
   comes back) stops instead of continuing it; of several gateway copies only one
   wins. A checkpoint that does not decode is fenced the same way;
2. its terminal event (`failure`, or the deadline's `timeout` or `rejected`) with
   the next seq is published like any runner event (with its message id), and
   stored through the normal ingest path.

It also hands over again the decisions stored on waiting runs that no runner has acted on (the
bus was away when the decision was made): a decision is stored on its run first, then handed to
the bus, and a runner takes the same decision twice as once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.js.errors import NotFoundError

from agentbus.contracts import (
    Event,
    Failure,
    Rejected,
    RunCheckpointHead,
    RunnerHeartbeat,
    RunStart,
    RunStats,
    RunWake,
    Timeout,
    encode,
    subjects,
)
from agentbus.contracts.codec import decoder
from agentbus.contracts.events import DecisionData, FailureData, TimeoutData
from agentbus.contracts.messages import deadline_feedback
from agentbus.gateway.bus import Bus
from agentbus.gateway.convert import decision_of
from agentbus.gateway.store import GatewayStore

log = logging.getLogger(__name__)

_beat = decoder(RunnerHeartbeat)
_head = decoder(RunCheckpointHead)
_start = decoder(RunStart)


class Reaper:
    # A stored decision still unanswered after this long is handed to the bus again.
    REDELIVER_AFTER_S = 5.0

    def __init__(
        self,
        store: GatewayStore,
        bus: Bus,
        after_s: float,
        interval_s: float,
        instance: str,
        on_round: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.on_round = on_round  # also every round: release held runs that fit (admission.py)
        self.bus = bus
        self.after_s = after_s
        self.interval_s = interval_s
        self.instance = instance
        self.seen: dict[str, float] = {}  # run_id -> monotonic time of the last announcement
        self.woken: dict[str, float] = {}  # run_id -> when a missed deadline's wake was sent
        self.started = time.monotonic()
        # what it did, by action (redelivered, woken, reaped): read by the Prometheus exposition
        self.actions: dict[str, int] = {"redelivered": 0, "woken": 0, "reaped": 0}
        self.sub: Any = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.sub = await self.bus.nc.subscribe(subjects.RUN_HEARTBEAT, cb=self._on_beat)
        self.task = asyncio.create_task(self._loop(), name="reaper")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()

    async def _on_beat(self, msg: Any) -> None:
        try:
            beat = _beat.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("dropping an undecodable heartbeat on %s: %s", msg.subject, exc)
            return
        now = time.monotonic()
        for run_id in beat.run_ids:
            self.seen[run_id] = now

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.redeliver()
                await self.sweep()
            except Exception as exc:  # database or broker away: try again next round
                log.warning("reaper sweep failed: %r", exc)
            if self.on_round is not None:
                await self.on_round()

    async def redeliver(self) -> list[str]:
        cutoff = datetime.now(UTC) - timedelta(seconds=self.REDELIVER_AFTER_S)
        rows = await self.store.pending_decisions(cutoff)
        for row in rows:
            await self.bus.decide(decision_of(row.id, row.approval), row.agent, row.task_id)
            self.actions["redelivered"] += 1
            log.info("run %s: stored decision handed to the runners again", row.id)
        return [r.id for r in rows]

    async def sweep(self) -> list[str]:
        now = time.monotonic()
        # Forget old announcements so the map does not grow with every run ever seen.
        self.seen = {k: t for k, t in self.seen.items() if now - t < 10 * self.after_s}
        self.woken = {k: t for k, t in self.woken.items() if now - t < 10 * self.after_s}
        if now - self.started < self.after_s:
            return []  # not listened long enough to know who holds what
        cutoff = datetime.now(UTC) - timedelta(seconds=self.after_s)
        reaped = []
        for row in await self.store.stale_runs(cutoff):
            if now - self.seen.get(row.id, float("-inf")) < self.after_s:
                continue
            if row.status == "awaiting_approval" and row.approval_deadline is not None:
                woken = self.woken.get(row.id)
                if woken is None:  # the runners missed its deadline: tell them once more
                    await self.wake(row)
                    continue
                if now - woken < self.after_s:
                    continue
            if await self.reap(row):
                reaped.append(row.id)
        return reaped

    async def wake(self, row: Any) -> None:
        self.woken[row.id] = time.monotonic()
        wake = RunWake(run_id=row.id, task_id=row.task_id, reason="deadline")
        await self.bus.js.publish(subjects.run_wake(row.agent), encode(wake))
        self.actions["woken"] += 1
        log.warning("run %s: its approval deadline passed unanswered; woken again", row.id)

    async def reap(self, row: Any) -> bool:
        key = subjects.state_key(row.id)
        kv = self.bus.kv
        past_deadline = row.status == "awaiting_approval" and row.approval_deadline is not None
        policy = await self._deadline_policy(row.id) if past_deadline else None
        # Whether the deadline's policy is still to apply: the run's row says it waits, and so does
        # its checkpoint when there is a readable one.
        seq, revision, why, waiting = row.last_seq, None, "", past_deadline
        try:
            entry = await kv.get(key)
            revision = entry.revision
            head = _head.decode(entry.value)
            if head.phase == "finished":
                return False  # its terminal event exists; ingest will store it
            seq = max(seq, head.seq)
            waiting = waiting and head.phase == "awaiting_approval"
        except NotFoundError:
            pass
        except (msgspec.DecodeError, msgspec.ValidationError):
            # Fenced like any other: no runner can continue from it anyway.
            log.warning("run %s: unreadable checkpoint; reaping it", row.id)
            why, waiting = "; its checkpoint was unreadable", False
        seq += 1
        fence = encode(RunCheckpointHead(phase="finished", seq=seq, runner_id=f"reaper:{self.instance}"))
        try:
            if revision is None:
                await kv.create(key, fence)
            else:
                await kv.update(key, fence, last=revision)
        except Exception as exc:
            # A runner wrote meanwhile (it is alive after all), or another gateway reaped it first.
            log.info("run %s not reaped: %r", row.id, exc)
            return False
        now = datetime.now(UTC)
        waited = int(self.after_s)
        stats = RunStats(duration=(now - row.started_at).total_seconds() if row.started_at else 0.0)
        head = {
            "id": f"reaper:{self.instance}/{uuid.uuid4().hex}",  # the fence's runner_id first, as runners do
            "seq": seq,
            "timestamp": now,
            "task_id": row.task_id,
            "run_id": row.id,
        }
        event: Event
        if policy == "timeout" and waiting:
            data = TimeoutData(phase="approval", stats=stats)
            event = Timeout(**head, message="Approval timed out (applied by the gateway)", data=data)
        elif policy == "reject" and waiting:
            feedback = deadline_feedback(policy)
            event = Rejected(
                **head,
                message="Plan rejected: no decision within the approval deadline (applied by the gateway)",
                data=DecisionData(feedback=feedback, stats=stats),
            )
        else:
            if past_deadline:
                error = f"runner lost: no runner applied the approval deadline within {waited}s of it"
            else:
                error = f"runner lost: no runner held this run for {waited}s (it was {row.status})"
            if policy == "approve":
                error += " (on_approval_timeout: approve needs a runner to execute the plan)"
            event = Failure(**head, message="Runner lost", data=FailureData(error=error + why, stats=stats))
        event_type = str(type(event).__struct_config__.tag)
        await self.bus.js.publish(
            subjects.run_event(row.task_id, row.id, event_type),
            encode(event),
            headers={"Nats-Msg-Id": subjects.event_msg_id(row.id, seq)},
        )
        self.actions["reaped"] += 1
        log.warning("run %s reaped (%s): no runner announced it for %ss", row.id, event_type, waited)
        return True

    async def _deadline_policy(self, run_id: str) -> str | None:
        """The run's `on_approval_timeout`, from its stored record; None when it cannot be read."""
        try:
            entry = await self.bus.kv.get(subjects.start_key(run_id))
            return _start.decode(entry.value).on_approval_timeout
        except (NotFoundError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning(
                "run %s: no readable record to take its approval deadline policy from: %r", run_id, exc
            )
            return None

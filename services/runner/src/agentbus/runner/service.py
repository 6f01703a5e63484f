"""The runner service: pulls `run.start.<kind>` and `run.wake.<kind>` work, holds runs, routes
controls to them, answers pings and agent discovery (`endpoints.py`, a `nats.micro` service).

Work comes from durable pull consumers shared by every runner copy, one per
agent kind (pulled only by runners serving the kind, within its concurrency
limit), so each run is held by exactly one runner at a time. A held run is kept
alive with `in_progress()` heartbeats; when its holder dies, JetStream
redelivers it after ack_wait and the next holder resumes it from its checkpoint.

A message only names a run: the runner acts on the run's stored record
(`<run_id>.start`, written by the gateway) and checkpoint, and only when the
message may act on it (`work.verdict`). A run waiting for a decision is parked and
released (`RunParked`): its message goes back to JetStream with a delay that
ends at the deadline, and a `run.wake` claims it earlier for a decision or a
cancel (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgspec
from nats.aio.msg import Msg

from agentbus.common import tracing
from agentbus.common.bus import artifacts_store, connect_with_retry, ensure_streams, guarded, run_state_kv
from agentbus.common.logs import bind_run
from agentbus.contracts import (
    Ping,
    Pong,
    RunControl,
    RunnerHeartbeat,
    RunnerInfo,
    RunStart,
    encode,
    subjects,
)
from agentbus.contracts.codec import decoder
from agentbus.runner.agents import Agent, AgentRegistry
from agentbus.runner.endpoints import Endpoints
from agentbus.runner.lanes import Lane, Puller
from agentbus.runner.run import RunExecution, RunParked
from agentbus.runner.settings import Settings
from agentbus.runner.store import BusError, RunDeletedError, RunLostError, RunStore, UnusableRunError
from agentbus.runner.work import Work, dead_letter, end_unusable, settle_quietly, start_decoder, verdict

log = logging.getLogger(__name__)

try:
    VERSION = version("agentbus-runner")
except PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0"

_control_decoder = decoder(RunControl)


@dataclass
class Held:
    msg: Msg  # the latest delivery of the run's work message: the one we ack or nak
    execution: RunExecution
    task: asyncio.Task[None]


class Runner:
    """One runner instance. `await Runner(settings).start()`, later `await runner.stop()`."""

    def __init__(
        self, settings: Settings, agents: dict[str, type[Agent]] | None = None, plugins: bool = True
    ) -> None:
        self.settings = settings
        self.registry = AgentRegistry(agents, plugins=plugins, only=settings.agents)
        self.held: dict[str, Held] = {}  # run_id -> the run this runner is executing
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.puller = Puller(settings, self.registry.kinds(), self._accept, self._stopping)
        self._subs: list[Any] = []
        self.endpoints: Endpoints | None = None
        self._announce_task: asyncio.Task[None] | None = None
        self.nc: Any = None

    @property
    def active_runs(self) -> int:
        return len(self.held)

    async def start(self) -> Runner:
        s = self.settings
        self.nc = await connect_with_retry(s.nats_url, f"agentbus-runner-{s.runner_id}", "runner", s.nats)
        self.js = self.nc.jetstream()
        await ensure_streams(self.js, s.replicas)
        self.kv = await run_state_kv(self.js, s.replicas)
        self.obs = await artifacts_store(self.js, s.replicas)
        await self.puller.bind(self.js)
        self._subs = [
            await self.nc.subscribe(
                subjects.RUN_CONTROL_ALL, cb=guarded(subjects.RUN_CONTROL_ALL, self._on_control)
            ),
            *(lane.psub for lane in self.puller.lanes),  # unsubscribed with the others on stop
        ]
        self.endpoints = Endpoints(
            self.nc,
            instance=s.runner_id,
            version=VERSION,
            agents=self.registry.kinds(),
            pong=self.pong,
            info=self.info,
        )
        await self.endpoints.start()
        # Make sure the subscriptions exist at the server once start() returns. Not flush(): nats-py
        # writes its PING ahead of still-queued commands. A request to the ping subject is queued
        # after the SUBs (ours included), and the server takes a connection's commands in order: any
        # answer, ours or another runner's, means the server has processed them.
        await self.nc.request(subjects.RUN_PING, encode(Ping()), timeout=10)
        self.puller.start()
        self._announce_task = asyncio.create_task(self._announce_loop(), name="runner-announce")
        log.info(
            "runner %s ready: agents %s, capacity %d", s.runner_id, self.registry.kinds(), s.max_concurrency
        )
        return self

    async def _accept(self, msg: Msg, lane: Lane) -> None:
        try:
            work = Work.of(msg)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            log.error(
                "dropping a message on %s that is not a valid RunStart or RunWake: %s", msg.subject, exc
            )
            self.puller.release(lane)
            await dead_letter(self.nc, msg, str(exc))
            return
        task = asyncio.create_task(self._hold(msg, work, lane), name=f"run-{work.run_id}")
        self._tasks.add(task)
        # Release the slots however the task ends, even if it is cancelled before it starts.
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self.puller.release(lane))

    async def _wake_held(self, held: Held, msg: Msg) -> None:
        """A wake for a run this runner holds: a stored cancel is applied to it here (in case its
        `run.control` message was missed); a run about to park gets the wake back in a moment,
        when it is parked and the wake can claim it; otherwise the holder has what it needs."""
        execution = held.execution
        cancel = await execution.store.stored_cancel()
        if cancel is not None:
            if execution.request_cancel(cancel.reason):
                held.task.cancel()
            await settle_quietly(msg.ack(), execution.run_id)
        elif execution.waiting_for_human:
            await settle_quietly(msg.nak(delay=0.2), execution.run_id)
        else:
            await settle_quietly(msg.ack(), execution.run_id)

    async def _hold(self, msg: Msg, work: Work, lane: Lane) -> None:
        run_id = work.run_id
        bind_run(work.task_id, run_id)  # this task handles this run only: every line names it
        token = msg.metadata.sequence.stream
        current = asyncio.current_task()
        assert current is not None
        if run_id in self.held:
            held = self.held[run_id]
            if held.execution.token == token:
                # JetStream redelivered a run we still hold (heartbeats got lost): keep executing it
                # and answer the newest delivery.
                log.warning("run %s redelivered while held here; keeping the running execution", run_id)
                held.msg = msg
            else:
                await self._wake_held(held, msg)
            return
        store = RunStore(self.kv, run_id)
        try:
            stored = await store.load_all()
        except UnusableRunError as exc:
            log.error("%s; ending the run", exc)
            try:
                await end_unusable(self.js, store, work, exc, self.settings.runner_id)
            except Exception as end_exc:  # the reaper ends it instead
                log.warning("run %s: could not end it: %r", run_id, end_exc)
            await dead_letter(self.nc, msg, str(exc))
            return
        except BusError as exc:
            log.error("run %s handed back: %s", run_id, exc)
            await settle_quietly(msg.nak(delay=min(30, 2 * msg.metadata.num_delivered)), run_id)
            return
        why = verdict(work, stored, token)
        if why is not None:
            if why.startswith("stale"):
                log.debug("run %s: %s", run_id, why)
                await settle_quietly(msg.ack(), run_id)
            else:
                log.error("run %s: %s; dropping its work", run_id, why)
                await dead_letter(self.nc, msg, f"run {run_id}: {why}")
            return
        start = stored.start or start_decoder.decode(msg.data)  # see work.verdict: a run from before records
        if stored.start_raw is not None and not work.wake and stored.start_raw != msg.data:
            log.warning("run %s: its start message differs from its stored record; using the record", run_id)
        if not tracing.enabled():
            await self._execute(msg, work, start, store, stored, token, current)
            return
        attributes = {
            "agentbus.run_id": run_id,
            "agentbus.task_id": start.task_id,
            "agentbus.agent": start.agent,
        }
        with tracing.span(
            f"run {start.agent}", parent=start.traceparent, kind="consumer", attributes=attributes
        ):
            await self._execute(msg, work, start, store, stored, token, current)

    async def _execute(
        self, msg: Msg, work: Work, start: RunStart, store: RunStore, stored: Any, token: int, current: Any
    ) -> None:
        run_id = work.run_id
        bind_run(start.task_id, run_id, tracing.traceparent() or start.traceparent)
        log.info(
            "run %s %s (delivery %d)",
            run_id,
            "woken" if work.wake else "taken",
            msg.metadata.num_delivered,
        )
        execution = RunExecution(
            start,
            js=self.js,
            kv=self.kv,
            obs=self.obs,
            registry=self.registry,
            runner_id=self.settings.runner_id,
            settings=self.settings,
            token=token,
            store=store,
        )
        held = self.held[run_id] = Held(msg, execution, current)
        beat = asyncio.create_task(self._heartbeat(held))
        hand_back = True
        parked: float | None = None
        try:
            await execution.run(stored.checkpoint, stored.cancel, stored.decision)
        except RunParked as exc:
            parked = exc.delay
            # The wait itself is logged once, as its `approval_required` event (lifelog.py).
            log.debug("run %s parked: waiting for a decision, at most %.0fs", run_id, exc.delay)
        except asyncio.CancelledError:
            if not execution.finished:
                log.info("run %s handed back (runner stopping)", run_id)
        except RunDeletedError as exc:
            log.warning("%s; dropping it", exc)
            hand_back = False
            with suppress(Exception):
                await held.msg.term()
        except RunLostError as exc:
            log.warning("%s; leaving it to them", exc)
            hand_back = False
            if execution.cp.holder != token or execution.cp.parked:
                # Another message's holder claimed it: this message is stale for good.
                await settle_quietly(held.msg.ack(), run_id)
        except BusError as exc:
            log.error("run %s handed back: %s", run_id, exc)
        except Exception:
            log.exception("run %s handed back after an unexpected error", run_id)
        else:
            if not execution.finished:  # a bug: every path of run() ends with a terminal event
                log.error("run %s: execution returned without a terminal event; handing it back", run_id)
        finally:
            beat.cancel()
            del self.held[run_id]
        await self._settle(held, hand_back, parked)

    async def _settle(self, held: Held, hand_back: bool, parked: float | None = None) -> None:
        try:
            if parked is not None:
                # The message becomes the run's deadline: JetStream hands it to a runner then (a
                # hair late, so the deadline has passed when it is read; one read early parks the
                # run again for what is left).
                await held.msg.nak(delay=parked + 0.05)
            elif held.execution.finished:
                await held.msg.ack()
            elif hand_back:
                # Stopping: let another runner take it now. Failing: back off a little before a retry.
                delay = None if self._stopping.is_set() else min(30, 2 * held.msg.metadata.num_delivered)
                await held.msg.nak(delay=delay)
        except Exception as exc:  # JetStream redelivers after ack_wait anyway
            log.warning("could not ack/nak run %s: %r", held.execution.run_id, exc)

    async def _heartbeat(self, held: Held) -> None:
        while True:
            await asyncio.sleep(self.settings.ack_wait_s / 3)
            try:
                await held.msg.in_progress()
            except Exception as exc:
                log.debug("heartbeat for run %s failed: %r", held.execution.run_id, exc)

    async def _announce_loop(self) -> None:
        """Tell the gateways which runs this runner holds; a run nobody announces gets reaped."""
        while True:
            beat = RunnerHeartbeat(runner_id=self.settings.runner_id, run_ids=list(self.held))
            try:
                await self.nc.publish(subjects.RUN_HEARTBEAT, encode(beat))
            except Exception as exc:  # reconnecting: the next beat goes out once connected
                log.debug("heartbeat not sent: %r", exc)
            await asyncio.sleep(self.settings.heartbeat_s)

    # --- control and ping --------------------------------------------------------------------------

    async def _on_control(self, msg: Msg) -> None:
        try:
            ctl = _control_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("dropping an undecodable RunControl on %s: %s", msg.subject, exc)
            return
        held = self.held.get(ctl.run_id)
        if held is None:
            return  # held elsewhere, or by no one: the next holder reads the stored decision
        if ctl.kind == "cancel":
            if held.execution.request_cancel(ctl.reason):
                held.task.cancel()  # interrupts whatever the agent is awaiting
        else:
            held.execution.offer_decision(ctl)

    def pong(self) -> Pong:
        return Pong(
            service="runner",
            instance=self.settings.runner_id,
            version=VERSION,
            agents=self.registry.kinds(),
            active_runs=self.active_runs,
            capacity=self.settings.max_concurrency,
        )

    def info(self) -> RunnerInfo:
        """Discovery: what this runner serves right now, with each kind's config schema and limit."""
        active: dict[str, int] = {}
        for held in self.held.values():
            active[held.execution.start.agent] = active.get(held.execution.start.agent, 0) + 1
        agents = []
        for kind in self.registry.kinds():
            desc = self.registry.describe(kind)
            desc.max_concurrency = self.settings.agent_concurrency.get(kind)
            desc.active_runs = active.get(kind, 0)
            agents.append(desc)
        return RunnerInfo(
            instance=self.settings.runner_id,
            version=VERSION,
            agents=agents,
            active_runs=self.active_runs,
            capacity=self.settings.max_concurrency,
        )

    def _hand_back(self, held: Held) -> None:
        held.execution.hand_back()
        held.task.cancel()

    # --- stopping ----------------------------------------------------------------------------------

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop pulling, let active runs finish within the grace period, hand the rest back, drain."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        grace = self.settings.grace_s if grace_s is None else grace_s
        if self._announce_task is not None:
            self._announce_task.cancel()
        # It winds down (its lingering pull request may take fetch_timeout_s) while runs finish.
        self.puller.cancel()
        # A run only waiting for a human has nothing to finish: hand it back at once.
        for held in list(self.held.values()):
            if held.execution.waiting_for_human:
                self._hand_back(held)
        tasks = set(self._tasks)
        if tasks:
            log.info("waiting up to %ss for %d active runs", grace, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace) if grace > 0 else (set(), tasks)
            for held in list(self.held.values()):
                if held.task in pending:
                    self._hand_back(held)
            for task in pending:  # also any task that had not registered its run yet
                task.cancel()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=10)
                if stuck:  # an agent that ignores cancellation: JetStream redelivers after ack_wait
                    log.error("%d runs did not stop; leaving them to redelivery", len(stuck))
        await self.puller.wait()
        # Unsubscribe rather than drain these: nats-py's drain of a pull subscription waits forever
        # on messages that fetch() consumed without marking them done.
        for sub in self._subs:
            with suppress(Exception):
                await sub.unsubscribe()
        if self.endpoints is not None:
            await self.endpoints.stop()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()  # flushes the last acks/naks
            except Exception as exc:
                log.warning("draining the NATS connection failed: %r", exc)
        log.info("runner %s stopped", self.settings.runner_id)


@asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[Runner]:
    """A started runner for the duration of the block (handy in tests and embedding)."""
    runner = await Runner(settings, **kwargs).start()
    try:
        yield runner
    finally:
        await runner.stop()

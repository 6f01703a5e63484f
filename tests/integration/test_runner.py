"""The runner against a real nats-server: work queue in, events out, decisions and cancels stored in KV.

Each test starts its own runner in-process (`agentbus.runner.running`) and uses fresh run ids.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest
from nats.js.errors import NoStreamResponseError, NotFoundError

from agentbus.contracts import (
    Event,
    Ping,
    Pong,
    RunControl,
    RunStart,
    RunWake,
    decode_event,
    encode,
    subjects,
)
from agentbus.runner import Runner, Settings, running
from agentbus.runner.agents import Agent, AgentContext
from agentbus.runner.store import Checkpoint
from tests.support.servers import NatsServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)

TERMINAL = {"completion", "failure", "rejected", "cancelled", "timeout"}


def etype(event: Event) -> str:
    return str(type(event).__struct_config__.tag)


def settings(nats_url: str, **overrides: Any) -> Settings:
    # A short pull timeout and grace make stop() quick; the rest are production defaults.
    return Settings(
        nats_url=nats_url,
        runner_id=f"test-{uuid.uuid4().hex[:6]}",
        fetch_timeout_s=0.5,
        grace_s=2,
        **overrides,
    )


class SlowAgent(Agent):
    """An agent that cannot resume, with long steps: used to lose a runner mid-step."""

    kind = "slow"
    supports_resume = False

    async def plan(self, ctx: AgentContext) -> dict[str, Any]:
        return {"steps": ["only"]}

    async def execute_step(self, ctx: AgentContext, index: int, step: Any) -> Any:
        await asyncio.sleep(30)


EXTRA_AGENTS = {"slow": SlowAgent}


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()  # not drain(): event subscriptions are left with unread messages


@pytest.fixture
async def runner(nats_url: str) -> AsyncIterator[Runner]:
    async with running(settings(nats_url), agents=EXTRA_AGENTS) as r:
        yield r


class RunEvents:
    """A run's events, read from the AGENTBUS_EVENTS stream in order through an ordered consumer."""

    def __init__(self, js: Any, run_id: str) -> None:
        self.js, self.run_id = js, run_id
        self.events: list[Event] = []
        self.sub: Any = None
        self._caught_up = False

    async def _open(self) -> None:
        if self.sub is None:
            self.sub = await self.js.subscribe(
                f"{subjects.EVENTS_RUN_PREFIX}.*.{self.run_id}.>",
                stream=subjects.EVENTS_STREAM,
                ordered_consumer=True,
            )

    async def _next(self, timeout: float) -> Event:
        msg = await self.sub.next_msg(timeout=timeout)
        self._caught_up = msg.metadata.num_pending == 0
        event = decode_event(msg.data)
        self.events.append(event)
        return event

    async def wait_for(self, event_type: str, timeout: float = 10) -> Event:
        await self._open()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {event_type} for run {self.run_id}; got {self.types}")
            event = await self._next(remaining)
            if etype(event) == event_type:
                return event

    async def until_terminal(self, timeout: float = 10) -> list[Event]:
        await self._open()
        deadline = time.monotonic() + timeout
        while not self.events or self.types[-1] not in TERMINAL:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"run {self.run_id} did not end; got {self.types}")
            await self._next(remaining)
        return self.events

    async def all_stored(self) -> list[Event]:
        """Every event stored so far (call once the run can no longer emit)."""
        await self._open()
        while not self._caught_up:
            await self._next(5)
        return self.events

    @property
    def types(self) -> list[str]:
        return [etype(e) for e in self.events]


async def publish_start(js: Any, agent_config: dict | None = None, **fields: Any) -> RunStart:
    fields.setdefault("require_approval", False)
    start = RunStart(
        run_id=uuid.uuid4().hex,
        task_id=uuid.uuid4().hex,
        run_number=1,
        task_name="integration",
        agent_config={"step_delay_ms": 20, **(agent_config or {})},
        **fields,
    )
    await queue(js, start)
    return start


async def queue(js: Any, start: RunStart, subject: str | None = None) -> int:
    """What the gateway does: store the run's record, then queue it; the start message's sequence."""
    kv = await js.key_value(subjects.RUN_STATE_BUCKET)
    await kv.put(subjects.start_key(start.run_id), encode(start))
    return (await js.publish(subject or subjects.run_start(start.agent), encode(start))).seq


async def send_control(nc: Any, kv: Any, run_id: str, kind: str, **fields: Any) -> None:
    """What the gateway does: store the control, announce it to a holder, and wake a parked run."""
    ctl = encode(RunControl(run_id=run_id, kind=kind, **fields))  # type: ignore[arg-type]
    key = subjects.cancel_key(run_id) if kind == "cancel" else subjects.decision_key(run_id)
    await kv.put(key, ctl)
    await nc.publish(subjects.run_control(run_id), ctl)
    start = msgspec.json.decode((await kv.get(subjects.start_key(run_id))).value, type=RunStart)
    reason = "cancel" if kind == "cancel" else "decision"
    wake = RunWake(run_id=run_id, task_id=start.task_id, reason=reason)
    await nc.jetstream().publish(subjects.run_wake(start.agent), encode(wake))


async def parked(kv: Any, run_id: str, *runners: Runner) -> None:
    """The run waits for a decision, parked in its checkpoint: no runner holds it."""

    async def done() -> bool:
        cp = await checkpoint(kv, run_id)
        return cp is not None and cp.parked and all(run_id not in r.held for r in runners)

    await eventually(done, what=f"run {run_id} parked")


async def gone_from_work_queue(js: Any, seq: int) -> bool:
    """Acked or terminated work leaves the work-queue stream; handed-back work stays."""
    try:
        await js.get_msg(subjects.RUN_COMMANDS_STREAM, seq)
    except NotFoundError:
        return True
    return False


async def checkpoint(kv: Any, run_id: str) -> Checkpoint | None:
    try:
        entry = await kv.get(subjects.state_key(run_id))
    except NotFoundError:
        return None
    return msgspec.json.decode(entry.value, type=Checkpoint)


async def wait_released(kv: Any, run_id: str, *runners: Runner, timeout: float = 10) -> None:
    """The run is finished in its checkpoint and no runner holds it any more: nothing can follow."""

    async def done() -> bool:
        cp = await checkpoint(kv, run_id)
        return cp is not None and cp.phase == "finished" and all(run_id not in r.held for r in runners)

    # retry_on: a broker that is restarting answers with errors for a while.
    await eventually(done, timeout, what=f"run {run_id} released", retry_on=(nats.errors.Error,))


def assert_gapless(events: list[Event]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.id for e in events}) == len(events)
    assert all(e.message for e in events)


@pytest.fixture
async def js(nc: Any, runner: Runner) -> Any:  # the runner has provisioned the streams by now
    return nc.jetstream()


@pytest.fixture
async def kv(js: Any) -> Any:
    return await js.key_value(subjects.RUN_STATE_BUCKET)


async def test_run_without_approval(js: Any, kv: Any, runner: Runner) -> None:
    start = await publish_start(js, {"steps": 3})
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal()
    assert log.types == ["analysis_start", "plan_ready", "progress", "progress", "progress", "completion"]
    assert_gapless(events)
    assert all(e.task_id == start.task_id and e.run_id == start.run_id for e in events)
    plan_ready, *progress, completion = events[1:]
    assert plan_ready.data.plan == {"steps": ["Step 1", "Step 2", "Step 3"]}  # type: ignore[attr-defined]
    assert [(p.data.step, p.data.total_steps, p.data.current_phase, p.data.title) for p in progress] == [  # type: ignore[attr-defined]
        (1, 3, "executing", "Step 1"),
        (2, 3, "executing", "Step 2"),
        (3, 3, "executing", "Step 3"),
    ]
    assert progress[-1].data.progress_percent == 100  # type: ignore[attr-defined]
    data = completion.data  # type: ignore[attr-defined]
    assert data.results["steps_completed"] == 3
    stats = data.stats
    assert (stats.steps, stats.tokens_prompt, stats.tokens_completion, stats.cost_usd, stats.agent) == (
        3,
        30,
        15,
        0.0,
        "scripted",
    )
    assert stats.approval_wait is None and stats.duration == data.duration > 0
    # time_to_plan: from analysis_start to plan_ready, as their timestamps say (rounded to ms).
    to_plan = (plan_ready.timestamp - events[0].timestamp).total_seconds()
    assert stats.time_to_plan == pytest.approx(to_plan, abs=0.0011)
    await wait_released(kv, start.run_id, runner)
    assert await log.all_stored() == events


async def test_approval_then_a_second_decision_is_ignored(nc: Any, js: Any, kv: Any, runner: Runner) -> None:
    start = await publish_start(js, {"steps": 2}, require_approval=True, approval_timeout_s=60)
    log = RunEvents(js, start.run_id)
    required = await log.wait_for("approval_required")
    assert required.data.plan == {"steps": ["Step 1", "Step 2"]}  # type: ignore[attr-defined]
    assert required.data.timeout_s == 60  # type: ignore[attr-defined]
    await parked(kv, start.run_id, runner)
    await send_control(nc, kv, start.run_id, "approve", feedback="looks good")
    await log.wait_for("approved")
    await send_control(nc, kv, start.run_id, "reject", feedback="changed my mind")
    events = await log.until_terminal()
    assert log.types == [
        "analysis_start",
        "plan_ready",
        "approval_required",
        "approved",
        "progress",
        "progress",
        "completion",
    ]
    assert_gapless(events)
    assert events[3].data.feedback == "looks good"  # type: ignore[attr-defined]
    assert events[-1].data.stats.approval_wait > 0  # type: ignore[attr-defined]
    await wait_released(kv, start.run_id, runner)
    assert await log.all_stored() == events


async def test_reject(nc: Any, js: Any, kv: Any, runner: Runner) -> None:
    start = await publish_start(js, require_approval=True)
    log = RunEvents(js, start.run_id)
    await log.wait_for("approval_required")
    await send_control(nc, kv, start.run_id, "reject", feedback="no")
    events = await log.until_terminal()
    assert log.types == ["analysis_start", "plan_ready", "approval_required", "rejected"]
    data = events[-1].data  # type: ignore[attr-defined]
    assert data.feedback == "no" and data.stats.steps == 0 and data.stats.approval_wait is not None


async def test_decision_stored_before_the_wait_is_applied(js: Any, kv: Any, runner: Runner) -> None:
    run_id = uuid.uuid4().hex
    await kv.put(
        subjects.decision_key(run_id), encode(RunControl(run_id=run_id, kind="approve", feedback="pre"))
    )
    start = RunStart(
        run_id=run_id, task_id="t", run_number=1, task_name="x", agent_config={"steps": 1, "step_delay_ms": 0}
    )
    await queue(js, start)
    log = RunEvents(js, run_id)
    await log.until_terminal()
    assert log.types == [
        "analysis_start",
        "plan_ready",
        "approval_required",
        "approved",
        "progress",
        "completion",
    ]
    assert log.events[3].data.feedback == "pre"  # type: ignore[attr-defined]


async def test_approval_timeout(js: Any, runner: Runner) -> None:
    start = await publish_start(js, require_approval=True, approval_timeout_s=0.5)
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal()
    assert log.types == ["analysis_start", "plan_ready", "approval_required", "timeout"]
    data = events[-1].data  # type: ignore[attr-defined]
    assert data.phase == "approval" and data.stats.approval_wait >= 0.5


async def test_execution_timeout(js: Any, runner: Runner) -> None:
    start = await publish_start(js, {"steps": 50, "step_delay_ms": 50}, timeout_s=1)
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal()
    assert log.types[-1] == "timeout" and events[-1].data.phase == "execution"  # type: ignore[attr-defined]
    assert 0 < log.types.count("progress") < 50
    assert_gapless(events)


async def test_failing_step(js: Any, runner: Runner) -> None:
    start = await publish_start(js, {"steps": 3, "fail_at_step": 2})
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal()
    assert log.types == ["analysis_start", "plan_ready", "progress", "failure"]
    error = events[-1].data.error  # type: ignore[attr-defined]
    assert "step 2/3" in error and "fail_at_step=2" in error and "Traceback" not in error
    assert events[-1].data.stats.steps == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"agent_config": {"steps": "many"}}, "invalid agent_config.steps: Expected `int`, got `str`"),
        ({"agent": "nope"}, "unknown agent kind 'nope'; available: openai, scripted, slow"),
    ],
)
async def test_bad_agent_or_config_fails_clearly(js: Any, runner: Runner, fields: dict, error: str) -> None:
    start = RunStart(run_id=uuid.uuid4().hex, task_id="t", run_number=1, task_name="x", **fields)
    # On a lane this runner serves: a start naming a kind it lacks (which the gateway refuses before
    # publishing) still fails clearly instead of waiting in the queue.
    await queue(js, start, subjects.run_start("scripted"))
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal()
    assert log.types == ["analysis_start", "failure"]
    # Installed plugin kinds (the agent-team example) may follow in the list of available kinds.
    assert events[-1].data.error.startswith(error)  # type: ignore[attr-defined]


async def test_cancel_mid_execution_stops_the_run(nc: Any, js: Any, kv: Any, runner: Runner) -> None:
    start = await publish_start(js, {"steps": 50, "step_delay_ms": 100})
    log = RunEvents(js, start.run_id)
    await log.wait_for("progress")
    await send_control(nc, kv, start.run_id, "cancel", reason="user asked")
    events = await log.until_terminal()
    assert log.types[-1] == "cancelled"
    assert events[-1].data.reason == "user asked"  # type: ignore[attr-defined]
    await wait_released(kv, start.run_id, runner)
    stored = await log.all_stored()
    assert etype(stored[-1]) == "cancelled"
    assert_gapless(stored)
    assert stored[-1].data.stats.steps == log.types.count("progress") < 50  # type: ignore[attr-defined]


async def test_cancel_while_waiting_and_stored_cancel(nc: Any, js: Any, kv: Any, runner: Runner) -> None:
    waiting = await publish_start(js, require_approval=True)
    log = RunEvents(js, waiting.run_id)
    await log.wait_for("approval_required")
    await send_control(nc, kv, waiting.run_id, "cancel")
    events = await log.until_terminal()
    assert log.types[-1] == "cancelled" and events[-1].data.stats.approval_wait is not None  # type: ignore[attr-defined]

    # Cancelled before any runner picked it up: the stored cancel is found first.
    run_id = uuid.uuid4().hex
    await kv.put(
        subjects.cancel_key(run_id), encode(RunControl(run_id=run_id, kind="cancel", reason="early"))
    )
    await queue(js, RunStart(run_id=run_id, task_id="t", run_number=1, task_name="x"))
    early = RunEvents(js, run_id)
    await early.until_terminal()
    assert early.types == ["cancelled"] and early.events[0].seq == 1
    assert early.events[0].data.reason == "early"  # type: ignore[attr-defined]


async def test_artifact_is_stored(js: Any, runner: Runner) -> None:
    start = await publish_start(js, {"steps": 2, "artifact": True})
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal()
    assert log.types == ["analysis_start", "plan_ready", "progress", "progress", "artifact", "completion"]
    artifact = events[4].data  # type: ignore[attr-defined]
    assert (artifact.name, artifact.content_type) == ("result.json", "application/json")
    store = await js.object_store(subjects.ARTIFACTS_BUCKET)
    obj = await store.get(f"{start.run_id}/result.json")
    assert len(obj.data) == artifact.size
    assert msgspec.json.decode(obj.data) == events[-1].data.results  # type: ignore[attr-defined]


async def test_undecodable_run_start_is_dropped(nc: Any, js: Any, runner: Runner) -> None:
    dead = await nc.subscribe(subjects.EVENTS_DEAD)
    bad = [
        b"not json",
        b'{"run_id": 1}',
        encode({"run_id": "a.b", "task_id": "t", "run_number": 1, "task_name": "x"}),  # not a subject token
    ]
    seqs = [(await js.publish(subjects.run_start("scripted"), payload)).seq for payload in bad]
    for payload in bad:
        assert (await dead.next_msg(timeout=10)).data == payload
    start = await publish_start(js, {"steps": 1})
    await RunEvents(js, start.run_id).until_terminal()
    for seq in seqs:
        await eventually(lambda seq=seq: gone_from_work_queue(js, seq), what=f"message {seq} terminated")


async def test_ping(nc: Any, runner: Runner) -> None:
    reply = await nc.request(subjects.RUN_PING, encode(Ping()), timeout=5)
    pong = msgspec.json.decode(reply.data, type=Pong)
    assert pong.service == "runner" and "scripted" in pong.agents and pong.capacity > 0


async def test_work_is_queued_only_per_agent_kind(js: Any, runner: Runner) -> None:
    info = await js.stream_info(subjects.RUN_COMMANDS_STREAM)
    assert info.config.subjects == [subjects.RUN_START_KINDS, subjects.RUN_WAKE_KINDS]
    with pytest.raises(NoStreamResponseError):  # no unrouted `run.start` lane any more
        await js.publish(subjects.RUN_START_KIND_PREFIX, b"{}", timeout=2)
    consumers = {
        c.name: c.config.filter_subjects for c in await js.consumers_info(subjects.RUN_COMMANDS_STREAM)
    }
    kinds = runner.registry.kinds()
    assert {k: consumers.get(subjects.kind_consumer(k)) for k in kinds} == {
        k: [subjects.run_start(k), subjects.run_wake(k)] for k in kinds
    }
    assert subjects.RUNNER_CONSUMER not in consumers


async def test_waiting_run_is_parked_and_woken_on_another_runner(
    nats_url: str, nc: Any, js: Any, kv: Any, runner: Runner
) -> None:
    start = await publish_start(js, {"steps": 2}, require_approval=True)
    log = RunEvents(js, start.run_id)
    await log.wait_for("approval_required")
    await parked(kv, start.run_id, runner)  # waiting holds no slot and no task
    assert runner.active_runs == 0
    async with running(settings(nats_url), agents=EXTRA_AGENTS) as other:
        await runner.stop()
        await send_control(nc, kv, start.run_id, "approve")
        events = await log.until_terminal()
        await wait_released(kv, start.run_id, other)
    assert log.types == [
        "analysis_start",
        "plan_ready",
        "approval_required",
        "approved",
        "progress",
        "progress",
        "completion",
    ]
    assert_gapless(events)
    assert (await checkpoint(kv, start.run_id)).runner_id == other.settings.runner_id  # type: ignore[union-attr]


async def test_run_resumes_after_its_step(nats_url: str, js: Any, kv: Any, runner: Runner) -> None:
    start = await publish_start(js, {"steps": 6, "step_delay_ms": 150})
    log = RunEvents(js, start.run_id)
    await log.wait_for("progress")
    await log.wait_for("progress")
    async with running(settings(nats_url), agents=EXTRA_AGENTS) as other:
        await runner.stop(grace_s=0)  # interrupts step 3; its checkpoint says 2 steps are done
        events = await log.until_terminal()
        await wait_released(kv, start.run_id, other)
    assert_gapless(events)
    assert [e.data.step for e in events if etype(e) == "progress"] == [1, 2, 3, 4, 5, 6]  # type: ignore[attr-defined]
    stats = events[-1].data.stats  # type: ignore[attr-defined]
    assert log.types[-1] == "completion" and stats.steps == 6 and stats.tokens_prompt == 60
    assert (await checkpoint(kv, start.run_id)).runner_id == other.settings.runner_id  # type: ignore[union-attr]


async def test_agent_without_resume_fails_when_its_runner_is_lost(
    nats_url: str, js: Any, kv: Any, runner: Runner
) -> None:
    start = await publish_start(js, agent="slow")
    log = RunEvents(js, start.run_id)
    await log.wait_for("plan_ready")
    async with running(settings(nats_url), agents=EXTRA_AGENTS) as other:
        await runner.stop(grace_s=0)
        events = await log.until_terminal()
        await wait_released(kv, start.run_id, other)
    assert log.types == ["analysis_start", "plan_ready", "failure"]
    assert events[-1].data.error == "runner lost while executing; agent slow cannot resume"  # type: ignore[attr-defined]


async def test_deleted_run_is_dropped(nc: Any, js: Any, kv: Any, runner: Runner) -> None:
    start = RunStart(run_id=uuid.uuid4().hex, task_id="t", run_number=1, task_name="x")
    await queue(js, start)
    log = RunEvents(js, start.run_id)
    await log.wait_for("approval_required")
    await parked(kv, start.run_id, runner)
    dead = await nc.subscribe(subjects.EVENTS_DEAD)
    await nc.flush()
    for key in (subjects.start_key(start.run_id), subjects.state_key(start.run_id)):
        await kv.delete(key)  # what deleting the run does
    wake = RunWake(run_id=start.run_id, task_id="t", reason="decision")
    seq = (await js.publish(subjects.run_wake(start.agent), encode(wake))).seq
    msg = await dead.next_msg(timeout=10)  # its wake names a run with no record: dropped, not run
    assert msgspec.json.decode(msg.data, type=RunWake).run_id == start.run_id
    assert "no stored record" in msg.headers["Agentbus-Error"]
    await eventually(lambda: gone_from_work_queue(js, seq), what="the wake terminated")
    assert start.run_id not in runner.held and await checkpoint(kv, start.run_id) is None
    assert [etype(e) for e in await log.all_stored()][-1] == "approval_required"


async def test_run_survives_a_broker_restart(tmp_path: Any) -> None:
    # A broker of its own: restarting the session one would disturb other tests.
    server = NatsServer(str(tmp_path)).start()
    try:
        async with running(settings(server.url)) as r:
            client = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
            try:
                js = client.jetstream(timeout=1)  # polls during the outage fail fast
                start = await publish_start(js, {"steps": 8, "step_delay_ms": 150})
                log = RunEvents(js, start.run_id)
                kv = await js.key_value(subjects.RUN_STATE_BUCKET)
                await log.wait_for("progress")
                server.stop()
                server.start()  # same port, same store: JetStream state survives
                await wait_released(kv, start.run_id, r, timeout=30)
                # A fresh reader: nats-py's ordered consumer is slow to notice a restarted server.
                log = RunEvents(js, start.run_id)
                events = await log.all_stored()
            finally:
                await client.close()
    finally:
        server.stop()
    assert_gapless(events)
    assert log.types[-1] == "completion"
    assert [e.data.step for e in events if etype(e) == "progress"] == list(range(1, 9))  # type: ignore[attr-defined]


# --- waiting costs nothing: parked runs, durable deadlines, runs the gateway never created -------


async def test_parked_runs_hold_no_slot(nats_url: str, nc: Any, js: Any, kv: Any) -> None:
    """A runner with one slot parks three waiting runs and still executes a fourth; a decision wakes
    each parked run and it finishes."""
    async with running(settings(nats_url, max_concurrency=1), agents=EXTRA_AGENTS) as one:
        waiting = [await publish_start(js, {"steps": 1}, require_approval=True) for _ in range(3)]
        for start in waiting:
            await RunEvents(js, start.run_id).wait_for("approval_required")
            await parked(kv, start.run_id, one)
        plain = await publish_start(js, {"steps": 2})
        assert (await RunEvents(js, plain.run_id).until_terminal())[-1].seq == 5  # completion
        for start in waiting:
            await send_control(nc, kv, start.run_id, "approve")
        for start in waiting:
            log = RunEvents(js, start.run_id)
            events = await log.until_terminal()
            assert log.types[-3:] == ["approved", "progress", "completion"]
            assert_gapless(events)


async def test_deadline_fires_on_time_while_parked(js: Any, kv: Any, runner: Runner) -> None:
    start = await publish_start(js, require_approval=True, approval_timeout_s=1.5)
    log = RunEvents(js, start.run_id)
    required = await log.wait_for("approval_required")
    await parked(kv, start.run_id, runner)
    events = await log.until_terminal()
    assert log.types[-1] == "timeout" and events[-1].data.phase == "approval"  # type: ignore[attr-defined]
    late = (events[-1].timestamp - required.timestamp).total_seconds() - 1.5
    assert 0 <= late < 1.0, f"the deadline fired {late:.2f}s late"  # "on time: within a second"


async def test_deadline_that_fell_due_while_no_runner_ran(nats_url: str, js: Any, kv: Any) -> None:
    """The deadline is kept by the broker, not by a runner: a run whose deadline passed while every
    runner was down times out as soon as one is back, without a decision."""
    async with running(settings(nats_url), agents=EXTRA_AGENTS) as first:
        start = await publish_start(js, require_approval=True, approval_timeout_s=1)
        log = RunEvents(js, start.run_id)
        required = await log.wait_for("approval_required")
        await parked(kv, start.run_id, first)
    # No runner now. Let the deadline fall due (its own condition: the clock passing it).
    due = required.timestamp.timestamp() + 1
    await eventually(lambda: time.time() > due + 0.5, what="the deadline passed")
    assert log.types == ["analysis_start", "plan_ready", "approval_required"]
    async with running(settings(nats_url), agents=EXTRA_AGENTS) as second:
        events = await log.until_terminal(timeout=15)
        await wait_released(kv, start.run_id, second)
    assert log.types[-1] == "timeout"
    assert events[-1].data.stats.approval_wait >= 1  # type: ignore[attr-defined]
    assert_gapless(events)


async def test_a_run_the_gateway_never_created_is_not_executed(
    nc: Any, js: Any, kv: Any, runner: Runner
) -> None:
    dead = await nc.subscribe(subjects.EVENTS_DEAD)
    await nc.flush()
    forged = RunStart(run_id=uuid.uuid4().hex, task_id="t", run_number=1, task_name="forged")
    seq = (await js.publish(subjects.run_start("scripted"), encode(forged))).seq  # no stored record
    msg = await dead.next_msg(timeout=10)
    assert "no stored record" in msg.headers["Agentbus-Error"]
    await eventually(lambda: gone_from_work_queue(js, seq), what="the start terminated")
    # A real run queued after it runs, and the forged one left nothing: no event, no checkpoint.
    real = await publish_start(js, {"steps": 1})
    await RunEvents(js, real.run_id).until_terminal()
    assert await checkpoint(kv, forged.run_id) is None

    async def event_subjects(run_id: str) -> dict[str, int]:
        info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=f"events.run.*.{run_id}.>")
        return info.state.subjects or {}

    assert len(await event_subjects(real.run_id)) == 4  # the look-up sees a run's events...
    assert await event_subjects(forged.run_id) == {}  # ...and the forged run has none


async def test_a_start_message_is_only_a_pointer_to_the_stored_record(
    js: Any, kv: Any, runner: Runner
) -> None:
    """A start message whose fields differ from the run's stored record: the record is what runs."""
    start = RunStart(
        run_id=uuid.uuid4().hex,
        task_id="t",
        run_number=1,
        task_name="x",
        require_approval=False,
        agent_config={"steps": 1, "step_delay_ms": 0},
    )
    await kv.put(subjects.start_key(start.run_id), encode(start))
    tampered = msgspec.structs.replace(start, agent_config={"steps": 7, "step_delay_ms": 0})
    await js.publish(subjects.run_start("scripted"), encode(tampered))
    log = RunEvents(js, start.run_id)
    await log.until_terminal()
    assert log.types == ["analysis_start", "plan_ready", "progress", "completion"]


async def test_a_garbage_checkpoint_ends_the_run_instead_of_looping(
    nc: Any, js: Any, kv: Any, runner: Runner
) -> None:
    start = await publish_start(js, {"steps": 1}, require_approval=True)
    log = RunEvents(js, start.run_id)
    await log.wait_for("approval_required")
    await parked(kv, start.run_id, runner)
    dead = await nc.subscribe(subjects.EVENTS_DEAD)
    await nc.flush()
    await kv.put(subjects.state_key(start.run_id), b"\x00garbage")
    await send_control(nc, kv, start.run_id, "approve")
    msg = await dead.next_msg(timeout=10)
    assert "checkpoint does not decode" in msg.headers["Agentbus-Error"]
    # Ended at the next seq (counted from the run's log), fenced, and its work dropped: no loop.
    events = await log.until_terminal()
    assert log.types == ["analysis_start", "plan_ready", "approval_required", "failure"]
    assert "unusable stored state" in events[-1].data.error  # type: ignore[attr-defined]
    assert (await checkpoint(kv, start.run_id)).phase == "finished"  # type: ignore[union-attr]
    with pytest.raises(nats.errors.TimeoutError):
        await dead.next_msg(timeout=1)
    assert start.run_id not in runner.held


async def test_a_garbage_record_ends_the_run(nc: Any, js: Any, kv: Any, runner: Runner) -> None:
    start = await publish_start(js, {"steps": 1}, require_approval=True)
    log = RunEvents(js, start.run_id)
    await log.wait_for("approval_required")
    await parked(kv, start.run_id, runner)
    await kv.put(subjects.start_key(start.run_id), b"[1, 2")
    wake = RunWake(run_id=start.run_id, task_id=start.task_id, reason="decision")
    await js.publish(subjects.run_wake("scripted"), encode(wake))
    events = await log.until_terminal()
    assert log.types == ["analysis_start", "plan_ready", "approval_required", "failure"]
    assert "stored record does not decode" in events[-1].data.error  # type: ignore[attr-defined]

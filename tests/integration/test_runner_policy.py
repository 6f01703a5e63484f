"""What a run's record asks of the runner besides its agent, on a real nats-server: the approval
deadline's policy (`on_approval_timeout`), applied by whichever runner holds the run at the deadline
(and by the gateway's reaper when none does), and the budget (`max_tokens`, `max_cost_usd`), checked
at each usage report and stopping the agent's work at once, model calls in flight included.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import msgspec
import nats
import pytest

from agentbus.common.bus import ensure_streams, run_state_kv
from agentbus.contracts import RunCheckpointHead, RunStart, encode, subjects
from agentbus.contracts.messages import deadline_feedback
from agentbus.gateway.reaper import Reaper
from agentbus.runner import Runner, running
from agentbus.runner.agents import Agent, AgentContext
from agentbus.runner.agents.openai import ModelAgent
from agentbus.runner.settings import ModelDefaults
from tests.integration.test_runner import (
    RunEvents,
    assert_gapless,
    checkpoint,
    etype,
    parked,
    publish_start,
    queue,
    settings,
    wait_released,
)
from tests.support.fake_openai import FakeOpenAI, Reply, Request
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


class NoteAgent(Agent):
    """Its one step returns the approver's note it was given."""

    kind = "note"
    supports_resume = True

    async def plan(self, ctx: AgentContext) -> dict[str, Any]:
        return {"steps": ["read the note"]}

    async def execute_step(self, ctx: AgentContext, index: int, step: Any) -> Any:
        return {"feedback": ctx.feedback}


class PairAgent(ModelAgent):
    """Its one step makes two model calls at once: a `slow` one that streams for as long as it is
    read, and, once that one is streaming, a `quick` one."""

    kind = "pair"

    async def plan(self, ctx: AgentContext) -> dict[str, Any]:
        return {"steps": ["two calls"]}

    async def execute_step(self, ctx: AgentContext, index: int, step: Any) -> Any:
        streaming = asyncio.Event()

        async def heard(_: str) -> None:
            streaming.set()

        async def slow() -> Any:
            client = self.client(ctx)
            assert self.setup is not None
            return await client.complete(
                [{"role": "user", "content": "slow"}], model=self.setup.model, on_text=heard
            )

        async def quick() -> Any:
            await streaming.wait()
            return await self.chat(ctx, [{"role": "user", "content": "quick"}], stream=False)

        done = await asyncio.gather(slow(), quick())
        return [d.text for d in done]


AGENTS = {"note": NoteAgent, "pair": PairAgent}


def pair_responder(req: Request) -> Reply:
    if "slow" in req.user_text:
        return Reply.drip(0.02)
    return Reply.chat("quick answer", usage=(100, 0))


@pytest.fixture(scope="module")
def model_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as s:
        yield s


def runner_settings(nats_url: str, model_server: FakeOpenAI) -> Any:
    defaults = ModelDefaults(base_url=model_server.url, model="fake-model", prices={"fake-model": (2.0, 4.0)})
    return settings(nats_url, model=defaults)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
async def js(nc: Any) -> Any:
    js = nc.jetstream()
    await ensure_streams(js, 1)  # what every service does at start: none need be running here
    return js


@pytest.fixture
async def kv(js: Any) -> Any:
    return await run_state_kv(js, 1)


@pytest.fixture
async def runner(nats_url: str, model_server: FakeOpenAI, js: Any) -> AsyncIterator[Runner]:
    model_server.reset()
    async with running(runner_settings(nats_url, model_server), agents=AGENTS) as r:
        yield r


def seconds(later: Any, earlier: Any) -> float:
    return float((later.timestamp - earlier.timestamp).total_seconds())


# --- the approval deadline's policy --------------------------------------------------------------


@pytest.mark.parametrize("policy", ["timeout", "reject", "approve"])
async def test_the_deadline_applies_the_runs_policy(policy: str, js: Any, kv: Any, runner: Runner) -> None:
    start = await publish_start(
        js, agent="note", require_approval=True, approval_timeout_s=1, on_approval_timeout=policy
    )
    log = RunEvents(js, start.run_id)
    required = await log.wait_for("approval_required")
    await parked(kv, start.run_id, runner)
    events = await log.until_terminal()
    await wait_released(kv, start.run_id, runner)
    assert await log.all_stored() == events  # nothing after the terminal event
    assert_gapless(events)
    decided = events[3]
    assert 1 <= seconds(decided, required) < 2, "applied at the deadline"
    head = ["analysis_start", "plan_ready", "approval_required"]
    if policy == "timeout":
        assert log.types == [*head, "timeout"]
        assert decided.data.phase == "approval"  # type: ignore[attr-defined]
    elif policy == "reject":
        assert log.types == [*head, "rejected"]
        data = decided.data  # type: ignore[attr-defined]
        assert data.feedback == "no decision within the approval deadline (on_approval_timeout: reject)"
        assert data.stats.steps == 0
    else:
        assert log.types == [*head, "approved", "progress", "completion"]
        assert decided.data.feedback == deadline_feedback("approve")  # type: ignore[attr-defined]
        assert decided.data.stats is None  # type: ignore[attr-defined]
        # The agent went on as approved, with no approver's note: no one wrote one.
        assert events[-1].data.results["outputs"] == [{"feedback": None}]  # type: ignore[attr-defined]
    assert events[-1].data.stats.approval_wait >= 1  # type: ignore[attr-defined]


# The deadline's event, and the run's last one, by policy.
AT_DEADLINE = {
    "timeout": ("timeout", "timeout"),
    "reject": ("rejected", "rejected"),
    "approve": ("approved", "completion"),
}


@pytest.mark.parametrize("policy", ["timeout", "reject", "approve"])
async def test_the_policy_is_applied_by_the_runner_that_holds_the_run_at_the_deadline(
    policy: str, nats_url: str, js: Any, kv: Any, model_server: FakeOpenAI
) -> None:
    """The policy is in the run's stored record, the deadline with the broker: a runner that never
    saw the run before applies it."""
    config = runner_settings(nats_url, model_server)
    async with running(config, agents=AGENTS) as first:
        start = await publish_start(
            js, agent="note", require_approval=True, approval_timeout_s=1.5, on_approval_timeout=policy
        )
        log = RunEvents(js, start.run_id)
        await log.wait_for("approval_required")
        await parked(kv, start.run_id, first)
    async with running(runner_settings(nats_url, model_server), agents=AGENTS) as second:
        events = await log.until_terminal()
        await wait_released(kv, start.run_id, second)
    assert_gapless(events)
    assert (log.types[3], log.types[-1]) == AT_DEADLINE[policy]
    if policy == "timeout":
        assert events[3].data.phase == "approval"  # type: ignore[attr-defined]
    else:
        assert events[3].data.feedback == deadline_feedback(policy)  # type: ignore[attr-defined]
    assert all(e.id.startswith(second.settings.runner_id + "/") for e in events[3:])
    assert all(e.id.startswith(first.settings.runner_id + "/") for e in events[:3])
    assert (await checkpoint(kv, start.run_id)).runner_id == second.settings.runner_id  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("policy", "phase", "event_type"),
    [
        ("timeout", "awaiting_approval", "timeout"),
        ("reject", "awaiting_approval", "rejected"),
        ("approve", "awaiting_approval", "failure"),
        ("reject", "executing", "failure"),  # decided after all (its events not stored yet): no policy
    ],
)
async def test_the_reaper_ends_a_missed_deadline_as_the_policy_says(
    policy: str, phase: str, event_type: str, js: Any, kv: Any
) -> None:
    """When no runner applied a deadline, the gateway's reaper applies what needs no agent; `approve`
    would need one to execute the plan, so that run fails as a last resort, saying so."""
    start = RunStart(
        run_id=uuid.uuid4().hex,
        task_id=uuid.uuid4().hex,
        run_number=1,
        task_name="missed",
        approval_timeout_s=1,
        on_approval_timeout=policy,  # type: ignore[arg-type]
    )
    await kv.put(subjects.start_key(start.run_id), encode(start))  # stored, never queued: no runner
    head = RunCheckpointHead(phase=phase, seq=3, runner_id="gone", parked=phase == "awaiting_approval")
    await kv.put(subjects.state_key(start.run_id), encode(head))
    now = datetime.now(UTC)
    row = SimpleNamespace(
        id=start.run_id,
        task_id=start.task_id,
        agent="scripted",
        last_seq=3,
        status="awaiting_approval",
        approval_deadline=now - timedelta(seconds=5),
        started_at=now - timedelta(seconds=7),
    )
    # The gateway's Bus is what the reaper uses of it: its KV bucket and its JetStream context.
    bus: Any = SimpleNamespace(kv=kv, js=js)
    reaper = Reaper(store=None, bus=bus, after_s=2, interval_s=1, instance="g1")  # type: ignore[arg-type]
    assert await reaper.reap(row)
    log = RunEvents(js, start.run_id)
    [event] = await log.until_terminal()
    assert (etype(event), event.seq) == (event_type, 4)
    assert event.id.startswith("reaper:g1/")
    data = event.data  # type: ignore[attr-defined]
    assert data.stats.duration >= 7
    if event_type == "timeout":
        assert data.phase == "approval"
    elif event_type == "rejected":
        assert data.feedback == deadline_feedback("reject")
    elif policy == "approve":
        assert data.error == (
            "runner lost: no runner applied the approval deadline within 2s of it "
            "(on_approval_timeout: approve needs a runner to execute the plan)"
        )
    else:
        assert data.error == "runner lost: no runner applied the approval deadline within 2s of it"
    fence = msgspec.json.decode(
        (await kv.get(subjects.state_key(start.run_id))).value, type=RunCheckpointHead
    )
    assert (fence.phase, fence.seq) == ("finished", 4)
    assert not await reaper.reap(row)  # ended once: the fence is seen


# --- budgets -------------------------------------------------------------------------------------


async def test_a_run_past_max_tokens_fails_at_that_report(js: Any, kv: Any, runner: Runner) -> None:
    # 10 prompt + 5 completion tokens a step: 45 after step 3, past 40.
    start = await publish_start(js, {"steps": 5, "step_delay_ms": 0}, max_tokens=40)
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal()
    await wait_released(kv, start.run_id, runner)
    assert await log.all_stored() == events  # nothing after the failure
    assert log.types == ["analysis_start", "plan_ready", "progress", "progress", "failure"]
    assert_gapless(events)
    failure = events[-1]
    assert failure.message == "Run failed: budget exceeded: 45 tokens, over max_tokens 40"
    wire = msgspec.json.decode(encode(failure))["data"]
    assert {k: wire[k] for k in ("error", "reason", "tokens", "cost_usd")} == {
        "error": "budget exceeded: 45 tokens, over max_tokens 40",
        "reason": "budget",
        "tokens": 45,
        "cost_usd": 0.0,
    }
    # The terminal stats, as of any failure: step 3's usage counted, its output not.
    stats = wire["stats"]
    assert (stats["steps"], stats["tokens_prompt"], stats["tokens_completion"]) == (2, 30, 15)
    assert stats["agent"] == "scripted" and stats["duration"] > 0


async def test_a_run_at_its_budget_completes(js: Any, runner: Runner) -> None:
    """Only passing a cap ends a run: 45 tokens of a 45-token budget is within it."""
    start = await publish_start(js, {"steps": 3, "step_delay_ms": 0}, max_tokens=45, max_cost_usd=0.0)
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal()
    assert log.types[-1] == "completion"
    assert events[-1].data.stats.tokens_prompt == 30  # type: ignore[attr-defined]


async def test_a_resumed_run_counts_from_its_checkpointed_usage(
    nats_url: str, js: Any, kv: Any, runner: Runner, model_server: FakeOpenAI
) -> None:
    """A run taken over after 2 steps (30 tokens) fails at its third (45), not at its fifth."""
    start = await publish_start(js, {"steps": 4, "step_delay_ms": 1000}, max_tokens=40)
    log = RunEvents(js, start.run_id)
    await log.wait_for("progress")
    await log.wait_for("progress")
    await runner.stop(grace_s=0)  # interrupts step 3: its checkpoint says 2 steps, 30 tokens
    cp = await checkpoint(kv, start.run_id)
    assert cp is not None and cp.steps_done == 2 and cp.usage is not None and cp.usage.prompt_tokens == 20
    async with running(runner_settings(nats_url, model_server), agents=AGENTS) as other:
        events = await log.until_terminal()
        await wait_released(kv, start.run_id, other)
    assert log.types == ["analysis_start", "plan_ready", "progress", "progress", "failure"]
    assert_gapless(events)
    assert events[-1].id.startswith(other.settings.runner_id + "/")
    assert events[-1].data.error == "budget exceeded: 45 tokens, over max_tokens 40"  # type: ignore[attr-defined]
    assert events[-1].data.tokens == 45  # type: ignore[attr-defined]


async def test_max_cost_stops_the_agent_at_the_report_not_at_its_next_call(
    js: Any, kv: Any, runner: Runner, model_server: FakeOpenAI
) -> None:
    """The openai agent's first plan is malformed and costs 0.001 USD (prices 2 and 4 USD per 1M
    tokens), past 0.0005: the run fails there, and the agent's retry is never sent."""
    model_server.script(Reply.chat("not a plan", usage=(300, 100)), Reply.plan("Never asked for"))
    start = RunStart(
        run_id=uuid.uuid4().hex,
        task_id=uuid.uuid4().hex,
        run_number=1,
        task_name="costly",
        agent="openai",
        agent_config={"stream": False, "plan_attempts": 3},
        require_approval=False,
        max_cost_usd=0.0005,
    )
    await queue(js, start)
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal()
    await wait_released(kv, start.run_id, runner)
    assert log.types == ["analysis_start", "failure"]
    data = events[-1].data  # type: ignore[attr-defined]
    assert data.error == "budget exceeded: 0.001 USD, over max_cost_usd 0.0005"
    assert (data.reason, data.tokens) == ("budget", 400)
    assert data.cost_usd == pytest.approx(0.001)
    assert data.stats.cost_usd == pytest.approx(0.001) and data.stats.tokens_prompt == 300
    assert len(model_server.chat_requests()) == 1, "the plan's second attempt was never sent"


async def test_the_budget_cancels_a_model_call_in_flight(
    js: Any, kv: Any, runner: Runner, model_server: FakeOpenAI
) -> None:
    """Of two calls at once, the quick one passes the budget while the slow one streams on (it never
    ends by itself): the slow one is aborted at once and the run fails, instead of waiting for it."""
    model_server.responder = pair_responder
    start = RunStart(
        run_id=uuid.uuid4().hex,
        task_id=uuid.uuid4().hex,
        run_number=1,
        task_name="pair",
        agent="pair",
        require_approval=False,
        max_tokens=50,
    )
    await queue(js, start)
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal()
    await wait_released(kv, start.run_id, runner)
    assert log.types == ["analysis_start", "plan_ready", "failure"]
    data = events[-1].data  # type: ignore[attr-defined]
    assert data.error == "budget exceeded: 100 tokens, over max_tokens 50"
    assert data.tokens == 100  # the quick call's usage only: the slow one never finished
    requests = {r.user_text: r for r in model_server.chat_requests()}
    assert set(requests) == {"slow", "quick"}
    await eventually(lambda: bool(model_server.disconnects), 5, what="the slow call aborted")
    assert model_server.disconnects[0] - requests["quick"].at < 1.0, "aborted at the report"

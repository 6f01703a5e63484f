"""The runner with real agents on a real nats-server: plan revisions, the openai agent against a real
OpenAI-compatible server on loopback (streamed progress, usage and cost, cancel), artifact limits,
per-kind routing and limits, and discovery on `run.runners.info`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import nats
import pytest

from agentbus.contracts import Ping, RunnerInfo, RunStart, encode, subjects
from agentbus.runner import Runner, running
from agentbus.runner.agents import Agent, AgentContext
from agentbus.runner.settings import ModelDefaults
from tests.integration.test_runner import (
    EXTRA_AGENTS,
    RunEvents,
    assert_gapless,
    etype,
    parked,
    queue,
    send_control,
    settings,
    wait_released,
)
from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)

GATES: dict[str, asyncio.Event] = {}  # run_id -> opened by the test to let GateAgent's step finish
STARTED: list[str] = []  # run ids, in the order GateAgent started executing them


class ReviserAgent(Agent):
    """Plans one step named after the plan version and the feedback it got."""

    kind = "reviser"
    supports_resume = True

    async def plan(self, ctx: AgentContext) -> dict[str, Any]:
        note = ctx.revisions[-1]["feedback"] if ctx.revisions else "first"
        return {"steps": [f"v{ctx.plan_version}: {note}"]}

    async def execute_step(self, ctx: AgentContext, index: int, step: Any) -> Any:
        return step


class GateAgent(Agent):
    """Its one step waits until the test opens the run's gate."""

    kind = "gate"

    async def plan(self, ctx: AgentContext) -> dict[str, Any]:
        return {"steps": ["wait"]}

    async def execute_step(self, ctx: AgentContext, index: int, step: Any) -> Any:
        STARTED.append(ctx.run_id)
        await GATES.setdefault(ctx.run_id, asyncio.Event()).wait()
        return "opened"


class HoarderAgent(Agent):
    """Writes the artifacts its agent_config lists: {"files": [[name, size], ...]}."""

    kind = "hoarder"

    async def plan(self, ctx: AgentContext) -> dict[str, Any]:
        return {"steps": ["write"]}

    async def execute_step(self, ctx: AgentContext, index: int, step: Any) -> Any:
        for name, size in ctx.agent_config["files"]:
            await ctx.write_artifact(name, b"x" * size, "application/octet-stream")
        return "written"


AGENTS = {**EXTRA_AGENTS, "reviser": ReviserAgent, "gate": GateAgent, "hoarder": HoarderAgent}


@pytest.fixture(scope="module")
def model_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as s:
        yield s


@pytest.fixture
async def runner(nats_url: str, model_server: FakeOpenAI) -> AsyncIterator[Runner]:
    model_server.reset()
    defaults = ModelDefaults(base_url=model_server.url, model="fake-model", prices={"fake-model": (2.0, 4.0)})
    config = settings(nats_url, model=defaults, artifact_max_bytes=1000, run_artifacts_max_bytes=1500)
    async with running(config, agents=AGENTS) as r:
        yield r


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
async def js(nc: Any, runner: Runner) -> Any:
    return nc.jetstream()


@pytest.fixture
async def kv(js: Any) -> Any:
    return await js.key_value(subjects.RUN_STATE_BUCKET)


async def routed_start(js: Any, agent: str, **fields: Any) -> RunStart:
    """What the gateway does: publish on the kind's subject, so only runners serving it take it."""
    fields.setdefault("require_approval", False)
    start = RunStart(
        run_id=uuid.uuid4().hex, task_id=uuid.uuid4().hex, run_number=1, task_name="t", agent=agent, **fields
    )
    await queue(js, start)
    return start


async def waiting(runner: Runner, kv: Any, run_id: str) -> None:
    await parked(kv, run_id, runner)


async def test_plan_revision_then_approval(nc: Any, js: Any, kv: Any, runner: Runner) -> None:
    start = await routed_start(js, "reviser", require_approval=True, max_revision_rounds=2)
    log = RunEvents(js, start.run_id)
    first = await log.wait_for("approval_required")
    assert first.data.plan == {"steps": ["v1: first"]} and first.data.version == 1  # type: ignore[attr-defined]
    await waiting(runner, kv, start.run_id)
    await send_control(nc, kv, start.run_id, "reject", feedback="shorter", revise=True, plan_version=1)
    second = await log.wait_for("approval_required")
    assert second.data.plan == {"steps": ["v2: shorter"]} and second.data.version == 2  # type: ignore[attr-defined]
    assert log.types == [
        "analysis_start",
        "plan_ready",
        "approval_required",
        "revision_requested",
        "plan_ready",
        "approval_required",
    ]
    revision = log.events[3].data  # type: ignore[attr-defined]
    assert (revision.version, revision.round, revision.feedback) == (1, 1, "shorter")
    assert log.events[4].data.version == 2  # type: ignore[attr-defined]
    # The stored decision on version 1 must not decide version 2: the run waits for a new one.
    await waiting(runner, kv, start.run_id)
    stale = await kv.get(subjects.decision_key(start.run_id))
    assert b'"plan_version":1' in stale.value
    await send_control(nc, kv, start.run_id, "approve", feedback="ok", plan_version=1)  # stale again
    await send_control(nc, kv, start.run_id, "approve", feedback="go", plan_version=2)
    events = await log.until_terminal()
    assert log.types[6:] == ["approved", "progress", "completion"]
    assert events[6].data.feedback == "go"  # type: ignore[attr-defined]
    assert events[-1].data.results["outputs"] == ["v2: shorter"]  # type: ignore[attr-defined]
    assert events[-1].data.stats.approval_wait > 0  # type: ignore[attr-defined]
    assert_gapless(events)


async def test_revision_rounds_are_bounded(nc: Any, js: Any, kv: Any, runner: Runner) -> None:
    start = await routed_start(js, "reviser", require_approval=True, max_revision_rounds=1)
    log = RunEvents(js, start.run_id)
    await log.wait_for("approval_required")
    await waiting(runner, kv, start.run_id)
    await send_control(nc, kv, start.run_id, "reject", feedback="again", revise=True, plan_version=1)
    await log.wait_for("revision_requested")
    await log.wait_for("approval_required")
    await waiting(runner, kv, start.run_id)
    await send_control(nc, kv, start.run_id, "reject", feedback="once more", revise=True, plan_version=2)
    events = await log.until_terminal()
    assert log.types[-1] == "rejected" and events[-1].data.feedback == "once more"  # type: ignore[attr-defined]
    assert log.types.count("plan_ready") == 2


async def test_openai_run_streams_progress_and_reports_usage_and_cost(
    js: Any, runner: Runner, model_server: FakeOpenAI
) -> None:
    text = "A long answer, streamed a few characters at a time. " * 6
    model_server.script(
        Reply.plan("Answer", usage=(100, 10)), Reply.chat(text, usage=(200, 50), chunk_chars=2, delay_s=0.005)
    )
    start = await routed_start(js, "openai", agent_config={"api_key": "sk-SECRET"})
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal(timeout=30)
    assert log.types[-1] == "completion", events[-1]
    partials = [e for e in events if etype(e) == "progress" and e.data.partial]  # type: ignore[attr-defined]
    assert partials, log.types
    assert all(p.data.current_phase in ("planning", "executing") for p in partials)  # type: ignore[attr-defined]
    streamed = [p for p in partials if p.data.current_phase == "executing"]  # type: ignore[attr-defined]
    assert streamed and all(text.startswith(p.data.partial) for p in streamed)  # type: ignore[attr-defined]
    # Coalesced: about 10 a second at most (the reply streams for about 0.8 s).
    span = (partials[-1].timestamp - partials[0].timestamp).total_seconds()
    assert len(partials) <= 12 * span + 2
    stats = events[-1].data.stats  # type: ignore[attr-defined]
    assert (stats.tokens_prompt, stats.tokens_completion) == (300, 60)
    assert stats.cost_usd == pytest.approx((300 * 2.0 + 60 * 4.0) / 1e6)
    assert "artifact" in log.types
    raw = b"".join(msgspec.json.encode(e) for e in events)
    assert b"sk-SECRET" not in raw, "the key is never in an event"
    assert model_server.chat_requests()[0].headers["authorization"] == "Bearer sk-SECRET"


async def test_cancel_during_streaming_aborts_the_model_request(
    nc: Any, js: Any, kv: Any, runner: Runner, model_server: FakeOpenAI
) -> None:
    model_server.script(Reply.plan("Talk forever"), Reply.drip(0.02))
    start = await routed_start(js, "openai")
    log = RunEvents(js, start.run_id)
    while True:  # a progress event with text from the step's stream
        event = await log.wait_for("progress", timeout=20)
        if event.data.current_phase == "executing":  # type: ignore[attr-defined]
            break
    cancelled_at = time.monotonic()
    await send_control(nc, kv, start.run_id, "cancel", reason="enough")
    events = await log.until_terminal()
    assert log.types[-1] == "cancelled" and events[-1].data.reason == "enough"  # type: ignore[attr-defined]
    await eventually(lambda: bool(model_server.disconnects), 5, what="the server sees it")
    assert model_server.disconnects[0] - cancelled_at < 1.0, "the HTTP request was aborted at once"
    await wait_released(kv, start.run_id, runner)


async def test_a_model_server_that_hangs_fails_the_run_clearly(
    js: Any, runner: Runner, model_server: FakeOpenAI
) -> None:
    model_server.script(Reply.hang(), Reply.hang())
    start = await routed_start(js, "openai", agent_config={"timeout_s": 0.3, "max_retries": 1})
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal()
    assert log.types == ["analysis_start", "failure"]
    assert events[-1].data.error == (  # type: ignore[attr-defined]
        f"planning failed: model server 127.0.0.1:{model_server.port} timed out waiting for an answer "
        "(0.3s) (gave up after 2 attempts)"
    )


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ([["big.bin", 1001]], "artifact 'big.bin' is 1001 bytes, over the per-file limit of 1000 bytes"),
        (
            [["a.bin", 800], ["b.bin", 800]],
            "artifact 'b.bin' (800 bytes) would take this run's artifacts to 1600 bytes, over the per-run "
            "limit of 1500 bytes",
        ),
    ],
)
async def test_artifact_limits_fail_the_run_clearly(js: Any, runner: Runner, files: list, error: str) -> None:
    start = await routed_start(js, "hoarder", agent_config={"files": files})
    log = RunEvents(js, start.run_id)
    events = await log.until_terminal()
    assert log.types[-1] == "failure"
    assert error in events[-1].data.error  # type: ignore[attr-defined]
    # A rewrite replaces: the same name twice counts once.
    if len(files) == 1:
        ok = await routed_start(js, "hoarder", agent_config={"files": [["a.bin", 900], ["a.bin", 900]]})
        log = RunEvents(js, ok.run_id)
        await log.until_terminal()
        assert log.types[-1] == "completion" and log.types.count("artifact") == 2


async def test_kind_limit_queues_runs_in_order(nats_url: str, js: Any, runner: Runner) -> None:
    await runner.stop()  # this test needs a runner with a limit of one `gate` run at a time
    async with running(settings(nats_url, agent_concurrency={"gate": 1}), agents=AGENTS) as limited:
        starts = [await routed_start(js, "gate") for _ in range(3)]
        logs = [RunEvents(js, s.run_id) for s in starts]
        await logs[0].wait_for("plan_ready")
        await eventually(lambda: starts[0].run_id in STARTED, what="first run executing")
        # The others wait in the queue, untouched: no event, not held (status pending).
        assert all(s.run_id not in limited.held for s in starts[1:])
        for i, s in enumerate(starts):
            GATES.setdefault(s.run_id, asyncio.Event()).set()
            await logs[i].until_terminal()
        assert [r for r in STARTED if r in {s.run_id for s in starts}] == [s.run_id for s in starts]
        firsts = [log.events[0].timestamp for log in logs]
        assert firsts == sorted(firsts), "started in order"


async def test_runner_limit_queues_beyond_capacity(nats_url: str, js: Any, runner: Runner) -> None:
    await runner.stop()
    async with running(settings(nats_url, max_concurrency=1), agents=AGENTS) as small:
        first, second = await routed_start(js, "gate"), await routed_start(js, "scripted")
        await eventually(lambda: first.run_id in STARTED, what="first run executing")
        assert second.run_id not in small.held
        GATES.setdefault(first.run_id, asyncio.Event()).set()
        log = RunEvents(js, second.run_id)
        await log.until_terminal()
        assert log.types[-1] == "completion"


async def test_runs_go_only_to_runners_serving_their_kind(nats_url: str, js: Any, runner: Runner) -> None:
    await runner.stop()
    async with running(settings(nats_url, agents=("scripted",)), agents=AGENTS) as plain:
        assert plain.registry.kinds() == ["scripted"]
        start = await routed_start(js, "reviser")
        log = RunEvents(js, start.run_id)
        with pytest.raises(nats.errors.TimeoutError):
            await log.wait_for("analysis_start", timeout=1.5)  # nobody here serves it: it waits
        async with running(settings(nats_url), agents=AGENTS) as full:
            await log.until_terminal()
            assert log.types[-1] == "completion"
            await wait_released(await js.key_value(subjects.RUN_STATE_BUCKET), start.run_id, full)


async def test_runner_info_lists_kinds_schemas_and_limits(nc: Any, nats_url: str, runner: Runner) -> None:
    await runner.stop()
    async with running(settings(nats_url, agent_concurrency={"openai": 3}), agents=AGENTS) as r:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(subjects.RUN_INFO, encode(Ping()), reply=inbox)
        deadline = time.monotonic() + 5
        while True:  # other runners of the session may answer too: find ours
            info = msgspec.json.decode(
                (await sub.next_msg(timeout=deadline - time.monotonic())).data, type=RunnerInfo
            )
            if info.instance == r.settings.runner_id:
                break
        await sub.unsubscribe()
    kinds = {a.kind: a for a in info.agents}
    assert {"scripted", "openai", "gate", "reviser"} <= set(kinds)
    assert kinds["openai"].max_concurrency == 3 and kinds["scripted"].max_concurrency is None
    assert kinds["openai"].supports_resume and "OpenAI-compatible" in kinds["openai"].description
    schema = kinds["openai"].config_schema
    assert schema is not None and "model" in schema["$defs"]["OpenAIConfig"]["properties"]
    assert "steps" in kinds["scripted"].config_schema["$defs"]["ScriptedConfig"]["properties"]  # type: ignore[index]
    assert info.capacity == r.settings.max_concurrency

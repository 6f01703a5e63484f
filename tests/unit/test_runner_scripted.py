"""The built-in scripted agent, the agent registry and the runner's settings, without a broker."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import msgspec
import pytest

from agentbus.contracts import RunStart
from agentbus.runner.agents import (
    ENTRY_POINT_GROUP,
    Agent,
    AgentConfigError,
    AgentContext,
    AgentError,
    AgentRegistry,
    ScriptedAgent,
    ScriptedConfig,
    UnknownAgentError,
    convert_config,
)
from agentbus.runner.agents import registry as registry_module
from agentbus.runner.settings import Settings


def ctx_for(agent_config: dict, writes: list | None = None) -> AgentContext:
    start = RunStart(run_id="r1", task_id="t1", run_number=1, task_name="demo", agent_config=agent_config)

    async def writer(name: str, data: bytes, content_type: str) -> None:
        assert writes is not None
        writes.append((name, data, content_type))

    return AgentContext(start, artifact_writer=writer if writes is not None else None)


def test_config_defaults() -> None:
    cfg = convert_config({}, ScriptedConfig)
    assert (cfg.steps, cfg.step_delay_ms, cfg.fail_at_step, cfg.artifact) == (3, 200, None, False)
    assert convert_config(None, ScriptedConfig).steps == 3
    most = {"steps": 1000, "step_delay_ms": 0, "fail_at_step": 2, "artifact": True}
    assert convert_config(most, ScriptedConfig).steps == 1000


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"steps": "3"}, "steps"),
        ({"steps": True}, "steps"),
        ({"steps": 0}, "steps"),
        ({"steps": 1001}, "steps"),
        ({"step_delay_ms": -1}, "step_delay_ms"),
        ({"step_delay_ms": "fast"}, "step_delay_ms"),
        ({"fail_at_step": 0}, "fail_at_step"),
        ({"fail_at_step": "2"}, "fail_at_step"),
        ({"artifact": "yes"}, "artifact"),
    ],
)
def test_invalid_config_names_the_field(config: dict, field: str) -> None:
    with pytest.raises(AgentConfigError, match=rf"^invalid agent_config\.{field}: "):
        convert_config(config, ScriptedConfig)


def test_config_must_be_an_object() -> None:
    with pytest.raises(AgentConfigError, match="invalid agent_config: Expected `object`"):
        convert_config([1, 2], ScriptedConfig)


async def test_plan_names_each_step() -> None:
    assert await ScriptedAgent().plan(ctx_for({"steps": 4})) == {
        "steps": ["Step 1", "Step 2", "Step 3", "Step 4"]
    }
    assert len((await ScriptedAgent().plan(ctx_for({})))["steps"]) == 3


async def test_plan_rejects_bad_config() -> None:
    with pytest.raises(AgentConfigError, match="steps"):
        await ScriptedAgent().plan(ctx_for({"steps": -2}))


async def test_steps_report_usage_and_fail_where_told() -> None:
    agent, ctx = ScriptedAgent(), ctx_for({"steps": 3, "step_delay_ms": 0, "fail_at_step": 2})
    out = await agent.execute_step(ctx, 0, "Step 1")
    assert out == {"step": 1, "title": "Step 1", "output": "Step 1 done"}
    assert ctx.usage is not None and (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (10, 5)
    with pytest.raises(AgentError, match="fail_at_step=2"):
        await agent.execute_step(ctx, 1, "Step 2")


async def test_finalize_writes_result_json_when_asked() -> None:
    writes: list = []
    results = await ScriptedAgent().finalize(ctx_for({"artifact": True}, writes), [{"step": 1}])
    assert results == {"steps_completed": 1, "outputs": [{"step": 1}]}
    [(name, data, content_type)] = writes
    assert (name, content_type) == ("result.json", "application/json")
    assert msgspec.json.decode(data) == results
    writes.clear()
    await ScriptedAgent().finalize(ctx_for({}, writes), [])
    assert writes == []


async def test_artifact_names_are_single_path_segments() -> None:
    ctx = ctx_for({}, [])
    for bad in ("", "a/b", ".."):
        with pytest.raises(AgentError, match="invalid artifact name"):
            await ctx.write_artifact(bad, b"x")


def test_registry_knows_scripted_and_names_the_available_kinds() -> None:
    registry = AgentRegistry()
    assert "scripted" in registry.kinds()
    assert isinstance(registry.create("scripted"), ScriptedAgent)
    with pytest.raises(UnknownAgentError, match=r"^unknown agent kind 'nope'; available: .*scripted"):
        registry.create("nope")


class EchoAgent(Agent):
    kind = "echo"


def test_registry_loads_entry_point_plugins_and_skips_broken_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = [
        EntryPoint("echo", f"{__name__}:EchoAgent", ENTRY_POINT_GROUP),
        EntryPoint("broken", "agentbus_no_such_module:Agent", ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(
        registry_module, "entry_points", lambda group: plugins if group == ENTRY_POINT_GROUP else []
    )
    registry = AgentRegistry()
    assert registry.kinds() == ["echo", "openai", "scripted"]
    assert isinstance(registry.create("echo"), EchoAgent)


def test_settings_from_env() -> None:
    s = Settings.from_env({})
    assert (s.nats_url, s.max_concurrency, s.ack_wait_s, s.grace_s, s.replicas) == (
        "nats://127.0.0.1:4222",
        100,
        30.0,
        10.0,
        1,
    )
    assert s.runner_id
    s = Settings.from_env(
        {"NATS_URL": "nats://n:1", "RUNNER_ID": "r-1", "RUNNER_MAX_CONCURRENCY": "7", "RUNNER_GRACE_S": "0.5"}
    )
    assert (s.nats_url, s.runner_id, s.max_concurrency, s.grace_s) == ("nats://n:1", "r-1", 7, 0.5)
    with pytest.raises(ValueError, match="RUNNER_MAX_CONCURRENCY"):
        Settings.from_env({"RUNNER_MAX_CONCURRENCY": "lots"})
    with pytest.raises(ValueError, match="RUNNER_MAX_CONCURRENCY"):
        Settings.from_env({"RUNNER_MAX_CONCURRENCY": "0"})

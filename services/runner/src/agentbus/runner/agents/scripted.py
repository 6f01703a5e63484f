"""The built-in `scripted` agent: deterministic, no model; used by demos and tests."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec

from agentbus.contracts import encode
from agentbus.runner.agents.base import Agent, AgentContext, AgentError, convert_config


class ScriptedConfig(msgspec.Struct, kw_only=True):
    steps: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    step_delay_ms: Annotated[float, msgspec.Meta(ge=0)] = 200
    fail_at_step: Annotated[int, msgspec.Meta(ge=1)] | None = None
    artifact: bool = False


class ScriptedAgent(Agent):
    kind = "scripted"
    description = "Deterministic built-in agent, no model: `steps` named steps, for demos and tests"
    config_type = ScriptedConfig
    supports_resume = True  # steps are independent, so any runner can pick up at the next one

    # Usage reported per step, so usage metrics exist without a model.
    PROMPT_TOKENS_PER_STEP = 10
    COMPLETION_TOKENS_PER_STEP = 5

    async def plan(self, ctx: AgentContext) -> dict[str, Any]:
        cfg = convert_config(ctx.agent_config, ScriptedConfig)
        return {"steps": [f"Step {i}" for i in range(1, cfg.steps + 1)]}

    async def execute_step(self, ctx: AgentContext, index: int, step: Any) -> Any:
        cfg = convert_config(ctx.agent_config, ScriptedConfig)
        await asyncio.sleep(cfg.step_delay_ms / 1000)
        number = index + 1
        if cfg.fail_at_step == number:
            raise AgentError(f"scripted failure at step {number} (fail_at_step={number})")
        ctx.report_usage(self.PROMPT_TOKENS_PER_STEP, self.COMPLETION_TOKENS_PER_STEP, 0.0)
        return {"step": number, "title": step, "output": f"{step} done"}

    async def finalize(self, ctx: AgentContext, outputs: list[Any]) -> Any:
        cfg = convert_config(ctx.agent_config, ScriptedConfig)
        results = {"steps_completed": len(outputs), "outputs": outputs}
        if cfg.artifact:
            await ctx.write_artifact("result.json", encode(results), "application/json")
        return results

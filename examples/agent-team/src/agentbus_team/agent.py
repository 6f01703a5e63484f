"""The adapter: the team as the agentbus agent kind `team` (registered by this package's entry point).

It implements the agent protocol (plan, revise, execute_step, finalize,
resume) on top of the team, and reuses agentbus's OpenAI-compatible model
client, so streaming, retries, timeouts, usage and cost come for free.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from agentbus.runner.agents import AgentContext, AgentError
from agentbus.runner.agents.openai import ModelAgent, OpenAIConfig, earlier_outputs, plan_text, task_text
from agentbus_team.team import Team, TeamError


class TeamConfig(OpenAIConfig, kw_only=True, forbid_unknown_fields=True):
    """The `openai` kind's settings (model, base_url, api_key, ...) plus the team's own."""

    review_rounds: Annotated[int, Meta(ge=0, le=5)] = 1  # times the reviewer may send a step back


class TeamAgent(ModelAgent):
    kind = "team"
    description = "A planner, a coder and a reviewer sharing one OpenAI-compatible model (example plug-in)"
    config_type = TeamConfig
    supports_resume = True  # a step needs only the plan and the earlier outputs

    def team(self, ctx: AgentContext) -> Team:
        cfg: TeamConfig = self.config(ctx)

        async def complete(messages: list[dict[str, Any]], response_format: dict[str, Any] | None) -> str:
            done = await self.chat(
                ctx,
                messages,
                response_format=response_format,
                stream=cfg.stream,
                temperature=cfg.temperature,
                max_tokens=cfg.max_tokens,
            )
            return done.text

        return Team(complete, review_rounds=cfg.review_rounds)

    async def plan(self, ctx: AgentContext) -> dict[str, Any]:
        feedback = [r.get("feedback") or "(none given)" for r in ctx.revisions]
        try:
            steps = await self.team(ctx).plan(task_text(ctx), ctx.max_rounds, feedback)
        except TeamError as exc:
            raise AgentError(str(exc)) from None
        return {"steps": steps, "team": ["planner", "coder", "reviewer"]}

    async def execute_step(self, ctx: AgentContext, index: int, step: Any) -> Any:
        cfg: TeamConfig = self.config(ctx)
        earlier = earlier_outputs(ctx.outputs, cfg.context_chars)
        brief = task_text(ctx) + (f"\n\nThe approver's note: {ctx.feedback}" if ctx.feedback else "")
        result = await self.team(ctx).work(brief, plan_text(ctx.plan), step, earlier)
        return {"step": index + 1, "title": step["title"], "output": result.output, "reviews": result.reviews}

    async def finalize(self, ctx: AgentContext, outputs: list[Any]) -> Any:
        lines = [f"# {ctx.task_name}", ""]
        for out in outputs:
            lines += [f"## {out['step']}. {out['title']}", "", out["output"], ""]
            lines += [f"> review: {r}" for r in out["reviews"]] + [""]
        await ctx.write_artifact("result.md", "\n".join(lines).encode(), "text/markdown")
        reviews = sum(len(o["reviews"]) for o in outputs)
        return {"steps_completed": len(outputs), "outputs": outputs, "reviews": reviews}

"""The `openai` agent: any OpenAI-compatible chat completions API plans the task and executes its steps.

Planning asks for structured output (`response_format` of type `json_schema`)
and validates the plan again on receipt; a malformed plan is sent back to the
model with the error, then the run fails with a clear message. Each step gets
the task, the whole plan, the approver's note and the earlier steps' outputs.
Tokens are streamed into `progress` events; usage and cost are reported.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from agentbus.runner.agents.base import Agent, AgentConfigError, AgentContext, AgentError, convert_config
from agentbus.runner.agents.llm import ChatClient, Completion, same_base_url

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# The plan the model is asked for. Sent without minItems/maxItems (strict structured-output modes
# reject some keywords); the count is checked on receipt instead.
PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "steps": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "description": {"type": "string"}},
                "required": ["title", "description"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["steps"],
    "additionalProperties": False,
}

PLANNER_PROMPT = (
    "You are the planner of an autonomous agent. Break the user's task into at most {max_steps} "
    "concrete steps, each of which can be carried out by writing text (analysis, code, prose). "
    'Answer with JSON only, exactly of the form {{"steps": [{{"title": "...", "description": "..."}}]}}: '
    "a short imperative title and a description of what the step must produce."
)
STEP_PROMPT = (
    "You are carrying out one step of an approved plan. Do exactly this step, building on the "
    "results of the earlier steps; later steps are done later. Answer with the step's result only. "
    "When you rely on a source, cite it with its URL."
)


class OpenAIConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """agent_config of the `openai` kind. Unset connection fields fall back to the runner's OPENAI_* env."""

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    system_prompt: Annotated[str, Meta(max_length=20000)] | None = None
    timeout_s: Annotated[float, Meta(gt=0, le=3600)] | None = None
    max_retries: Annotated[int, Meta(ge=0, le=20)] | None = None
    plan_attempts: Annotated[int, Meta(ge=1, le=10)] = 3
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    stream: bool = True
    include_usage: bool = True  # ask for usage in the stream (stream_options); estimated when absent
    context_chars: Annotated[int, Meta(ge=0)] = 16000  # budget for earlier steps' outputs in a prompt
    artifacts: bool = True  # write result.md (and sources.json when outputs cite URLs)


@dataclass
class ModelSetup:
    """agent_config merged over the runner's defaults: what one run talks to."""

    base_url: str
    api_key: str | None
    model: str
    timeout_s: float
    max_retries: int
    price: tuple[float, float] | None  # USD per 1M prompt / completion tokens


def resolve(cfg: Any, defaults: Any) -> ModelSetup:
    """cfg: a config with base_url/model/api_key/timeout_s/max_retries; defaults: runner ModelDefaults."""
    model = cfg.model or getattr(defaults, "model", None)
    if not model:
        raise AgentConfigError("no model: set agent_config.model, or OPENAI_MODEL on the runner")
    base_url = cfg.base_url or getattr(defaults, "base_url", None) or DEFAULT_BASE_URL
    if not re.match(r"^https?://", base_url):
        raise AgentConfigError("invalid agent_config.base_url: must start with http:// or https://")
    timeout = cfg.timeout_s or getattr(defaults, "timeout_s", None) or 120.0
    retries = cfg.max_retries if cfg.max_retries is not None else getattr(defaults, "max_retries", 4)
    price = defaults.price(model) if defaults is not None else None
    return ModelSetup(base_url, cfg.api_key or runner_key(base_url, defaults), model, timeout, retries, price)


def runner_key(base_url: str, defaults: Any) -> str | None:
    """The runner's OPENAI_API_KEY, for `base_url` only if it is the runner's model API (OPENAI_BASE_URL
    or one of OPENAI_ALLOWED_BASE_URLS): a task naming another server cannot have the key sent there,
    it brings its own. Refused before any request is made."""
    key: str | None = getattr(defaults, "api_key", None)
    if not key:
        return None  # nothing to protect: the request goes without one, as before
    allowed = (
        getattr(defaults, "base_url", None) or DEFAULT_BASE_URL,
        *getattr(defaults, "allowed_base_urls", ()),
    )
    if any(same_base_url(base_url, url) for url in allowed):
        return key
    raise AgentConfigError(
        "agent_config.base_url is not a model API the runner sends its OPENAI_API_KEY to "
        "(OPENAI_BASE_URL, OPENAI_ALLOWED_BASE_URLS): set agent_config.api_key for that server"
    )


def cost_usd(setup: ModelSetup, prompt_tokens: int, completion_tokens: int) -> float:
    if setup.price is None:
        return 0.0
    return (prompt_tokens * setup.price[0] + completion_tokens * setup.price[1]) / 1_000_000


class PlanStep(msgspec.Struct, forbid_unknown_fields=True):
    title: str
    description: str = ""


class PlanDoc(msgspec.Struct):
    steps: list[PlanStep]


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def parse_plan(text: str, max_steps: int) -> dict[str, Any]:
    """The plan in a model's answer, validated; ValueError says what is wrong (it goes back to the model)."""
    fenced = _FENCE.match(text)
    raw = fenced.group(1) if fenced else text.strip()
    if not raw:
        raise ValueError("the answer was empty")
    try:
        doc = msgspec.json.decode(raw, type=PlanDoc)
    except msgspec.ValidationError as exc:
        raise ValueError(f"the JSON does not match the schema: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ValueError(f"the answer is not JSON: {exc}") from None
    if not doc.steps:
        raise ValueError("`steps` is empty: a plan needs at least one step")
    if len(doc.steps) > max_steps:
        raise ValueError(f"the plan has {len(doc.steps)} steps; at most {max_steps} are allowed")
    steps = []
    for i, step in enumerate(doc.steps, 1):
        title = step.title.strip()
        if not title:
            raise ValueError(f"step {i} has an empty title")
        steps.append({"title": title[:200], "description": step.description.strip()})
    return {"steps": steps}


def response_format(mode: str) -> dict[str, Any] | None:
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "plan", "strict": True, "schema": PLAN_SCHEMA}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def task_text(ctx: AgentContext) -> str:
    parts = [f"Task: {ctx.task_name}"]
    if ctx.task_description:
        parts.append(f"Description:\n{ctx.task_description}")
    if ctx.task_config:
        parts.append(f"Task configuration (JSON):\n{json.dumps(ctx.task_config, ensure_ascii=False)}")
    return "\n\n".join(parts)


def plan_text(plan: dict[str, Any] | None) -> str:
    lines = []
    for i, step in enumerate((plan or {}).get("steps", []), 1):
        if isinstance(step, dict):
            desc = f" - {step['description']}" if step.get("description") else ""
            lines.append(f"{i}. {step.get('title', f'Step {i}')}{desc}")
        else:
            lines.append(f"{i}. {step}")
    return "\n".join(lines)


def earlier_outputs(outputs: list[Any], budget: int) -> str:
    """The earlier steps' outputs, newest kept whole first; older ones cut to fit `budget` characters."""
    blocks: list[str] = []
    for i in range(len(outputs) - 1, -1, -1):
        out = outputs[i]
        title = out.get("title", f"Step {i + 1}") if isinstance(out, dict) else f"Step {i + 1}"
        body = out.get("output", out) if isinstance(out, dict) else out
        body = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        if budget <= 0:
            body = "[omitted]"
        elif len(body) > budget:
            body = "[...]" + body[-budget:]
        budget -= len(body)
        blocks.append(f"### Step {i + 1}: {title}\n{body}")
    return "\n\n".join(reversed(blocks))


def planning_messages(ctx: AgentContext, system_prompt: str | None, max_steps: int) -> list[dict[str, Any]]:
    system = PLANNER_PROMPT.format(max_steps=max_steps)
    if system_prompt:
        system = f"{system_prompt}\n\n{system}"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": task_text(ctx)},
    ]
    for rev in ctx.revisions:
        messages.append({"role": "assistant", "content": json.dumps(rev["plan"], ensure_ascii=False)})
        messages.append(
            {
                "role": "user",
                "content": f"The reviewer sent this plan (version {rev['version']}) back with this "
                f"feedback:\n{rev.get('feedback') or '(no feedback given)'}\n\n"
                f"Write version {rev['version'] + 1} of the plan, addressing the feedback.",
            }
        )
    return messages


def step_messages(
    ctx: AgentContext, index: int, step: Any, system_prompt: str | None, budget: int
) -> list[dict[str, Any]]:
    title = step.get("title", f"Step {index + 1}") if isinstance(step, dict) else str(step)
    description = step.get("description", "") if isinstance(step, dict) else ""
    parts = [task_text(ctx), f"The approved plan:\n{plan_text(ctx.plan)}"]
    if ctx.feedback:
        parts.append(f"The approver's note:\n{ctx.feedback}")
    if ctx.outputs:
        parts.append(f"Results of the earlier steps:\n\n{earlier_outputs(ctx.outputs, budget)}")
    parts.append(f"Now carry out step {index + 1}: {title}" + (f"\n{description}" if description else ""))
    system = f"{system_prompt}\n\n{STEP_PROMPT}" if system_prompt else STEP_PROMPT
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


_URL = re.compile(r"https?://[^\s<>\"')\]]+")


def sources(outputs: list[Any]) -> list[dict[str, Any]]:
    """URLs cited in the step outputs, each with the steps that cite it."""
    found: dict[str, list[int]] = {}
    for i, out in enumerate(outputs, 1):
        text = out.get("output", "") if isinstance(out, dict) else str(out)
        for url in _URL.findall(text if isinstance(text, str) else json.dumps(text)):
            steps = found.setdefault(url.rstrip(".,;:"), [])
            if i not in steps:
                steps.append(i)
    return [{"url": url, "cited_in_steps": steps} for url, steps in found.items()]


def result_markdown(ctx: AgentContext, outputs: list[Any]) -> str:
    lines = [f"# {ctx.task_name}", ""]
    for i, out in enumerate(outputs, 1):
        title = out.get("title", f"Step {i}") if isinstance(out, dict) else f"Step {i}"
        body = out.get("output", out) if isinstance(out, dict) else out
        lines += [f"## {i}. {title}", "", body if isinstance(body, str) else json.dumps(body, indent=2), ""]
    return "\n".join(lines)


class ModelAgent(Agent):
    """Shared machinery of agents that talk to one OpenAI-compatible model: client, usage, cost, streaming."""

    config_type: Any = OpenAIConfig

    def __init__(self) -> None:
        self._client: ChatClient | None = None
        self.setup: ModelSetup | None = None
        self.estimated_usage = False

    def config(self, ctx: AgentContext) -> Any:
        return convert_config(ctx.agent_config, self.config_type)

    def client(self, ctx: AgentContext) -> ChatClient:
        if self._client is None:
            cfg = self.config(ctx)
            self.setup = resolve(cfg, getattr(ctx.settings, "model", None))
            self._client = ChatClient(
                self.setup.base_url,
                self.setup.api_key,
                timeout_s=self.setup.timeout_s,
                max_retries=self.setup.max_retries,
                include_usage=getattr(cfg, "include_usage", True),
            )
        return self._client

    async def chat(
        self,
        ctx: AgentContext,
        messages: list[dict[str, Any]],
        *,
        response_format: dict[str, Any] | None = None,
        stream: bool = True,
        **params: Any,
    ) -> Completion:
        """One completion; its usage and cost are reported, its streamed text becomes progress."""
        client = self.client(ctx)
        assert self.setup is not None
        done = await client.complete(
            messages,
            model=self.setup.model,
            response_format=response_format,
            stream=stream,
            on_text=ctx.report_progress if stream else None,
            **params,
        )
        if not done.usage_reported and not self.estimated_usage:
            self.estimated_usage = True
            log.info("model server %s reports no usage: token counts are estimated", client.host)
        ctx.report_usage(
            done.prompt_tokens,
            done.completion_tokens,
            cost_usd(self.setup, done.prompt_tokens, done.completion_tokens),
        )
        return done

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class OpenAIAgent(ModelAgent):
    kind = "openai"
    description = (
        "Any OpenAI-compatible chat completions API: OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM"
    )
    config_type = OpenAIConfig
    supports_resume = True  # a step needs only the plan and the earlier outputs, all checkpointed

    async def plan(self, ctx: AgentContext) -> dict[str, Any]:
        cfg: OpenAIConfig = self.config(ctx)
        max_steps = ctx.max_rounds
        messages = planning_messages(ctx, cfg.system_prompt, max_steps)
        fmt = response_format(cfg.structured_output)
        error = ""
        for attempt in range(1, cfg.plan_attempts + 1):
            done = await self.chat(
                ctx,
                messages,
                response_format=fmt,
                stream=cfg.stream,
                temperature=cfg.temperature,
                max_tokens=cfg.max_tokens,
            )
            try:
                return parse_plan(done.text, max_steps)
            except ValueError as exc:
                error = str(exc)
                log.info("run %s: plan attempt %d malformed: %s", ctx.run_id, attempt, error)
                messages = [
                    *messages,
                    {"role": "assistant", "content": done.text},
                    {
                        "role": "user",
                        "content": f"That plan is not valid: {error}. Answer again with only the JSON "
                        'object {"steps": [{"title": ..., "description": ...}]}.',
                    },
                ]
        raise AgentError(f"the model gave no valid plan in {cfg.plan_attempts} attempts; last: {error}")

    async def execute_step(self, ctx: AgentContext, index: int, step: Any) -> Any:
        cfg: OpenAIConfig = self.config(ctx)
        messages = step_messages(ctx, index, step, cfg.system_prompt, cfg.context_chars)
        done = await self.chat(
            ctx, messages, stream=cfg.stream, temperature=cfg.temperature, max_tokens=cfg.max_tokens
        )
        title = step.get("title") if isinstance(step, dict) else str(step)
        return {"step": index + 1, "title": title, "output": done.text}

    async def finalize(self, ctx: AgentContext, outputs: list[Any]) -> Any:
        cfg: OpenAIConfig = self.config(ctx)
        setup = self.setup or resolve(cfg, getattr(ctx.settings, "model", None))
        results: dict[str, Any] = {"steps_completed": len(outputs), "outputs": outputs, "model": setup.model}
        if self.estimated_usage:
            results["usage_estimated"] = True
        if cfg.artifacts and outputs:
            await ctx.write_artifact("result.md", result_markdown(ctx, outputs).encode(), "text/markdown")
            cited = sources(outputs)
            if cited:
                await ctx.write_artifact(
                    "sources.json", json.dumps(cited, indent=2).encode(), "application/json"
                )
        return results

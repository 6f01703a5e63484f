"""The agent protocol: plan a task, then execute the (approved) plan step by step.

An agent never talks to NATS itself: it reports artifacts and usage through its
`AgentContext`, and the runner turns them into events, checkpoints and stats.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import msgspec

from agentbus.contracts import RunStart

ArtifactWriter = Callable[[str, bytes, str], Awaitable[None]]


class AgentError(Exception):
    """An agent's own, expected failure: the run ends `failure` with exactly this message."""


class AgentConfigError(AgentError):
    """The run's agent_config is invalid; the message names the field."""


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class AgentContext:
    """What an agent sees of its run: the RunStart fields, its config, and ways to report back."""

    def __init__(
        self,
        start: RunStart,
        *,
        artifact_writer: ArtifactWriter | None = None,
        usage: Usage | None = None,
        plan: dict[str, Any] | None = None,
        feedback: str | None = None,
    ) -> None:
        self.start = start
        self.run_id = start.run_id
        self.task_id = start.task_id
        self.run_number = start.run_number
        self.task_name = start.task_name
        self.task_description = start.task_description
        self.task_config = start.task_config
        self.agent_config = start.agent_config
        self.max_rounds = start.max_rounds
        self.plan = plan  # the approved plan once execution starts
        self.feedback = feedback  # the approver's feedback, if any
        self.usage = usage  # None until the agent reports some
        self._artifact_writer = artifact_writer

    async def write_artifact(
        self, name: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Store `data` as this run's artifact `name` (and announce it with an `artifact` event)."""
        if not name or "/" in name or name in (".", ".."):
            raise AgentError(f"invalid artifact name {name!r}")
        if self._artifact_writer is None:
            raise AgentError("this context cannot store artifacts")
        await self._artifact_writer(name, bytes(data), content_type)

    def report_usage(self, prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float = 0.0) -> None:
        """Add model usage; the totals end up in the run's terminal stats."""
        if self.usage is None:
            self.usage = Usage()
        self.usage.prompt_tokens += int(prompt_tokens)
        self.usage.completion_tokens += int(completion_tokens)
        self.usage.cost_usd += float(cost_usd)


class Agent:
    """Base class (and protocol) of every agent kind; one instance serves one run.

    `supports_resume`: execute_step may be called for the steps after the last
    finished one by a runner that did not plan the run (after a runner was lost).
    """

    kind: ClassVar[str] = ""
    supports_resume: ClassVar[bool] = False

    async def plan(self, ctx: AgentContext) -> dict[str, Any]:
        """Return the plan: a dict with at least `steps`, a non-empty list (strings or dicts with `title`)."""
        raise NotImplementedError

    async def execute_step(self, ctx: AgentContext, index: int, step: Any) -> Any:
        """Execute plan step `index` (0-based); return its output (JSON-serialisable)."""
        raise NotImplementedError

    async def finalize(self, ctx: AgentContext, outputs: list[Any]) -> Any:
        """Turn the step outputs into the run's results."""
        return {"outputs": outputs}


def step_title(index: int, step: Any) -> str:
    if isinstance(step, str):
        return step
    if isinstance(step, dict):
        for key in ("title", "name", "description"):
            if isinstance(step.get(key), str):
                return step[key]
    return f"Step {index + 1}"

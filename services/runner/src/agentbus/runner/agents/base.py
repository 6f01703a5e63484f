"""The agent protocol: plan a task, then execute the (approved) plan step by step.

An agent never talks to NATS itself: it reports streamed text, artifacts and
usage through its `AgentContext`, and the runner turns them into events,
checkpoints and stats.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import msgspec

from agentbus.contracts import RunStart
from agentbus.contracts.artifacts import valid_artifact_name, valid_content_type

T = TypeVar("T")
ArtifactWriter = Callable[[str, bytes, str], Awaitable[None]]
ProgressReporter = Callable[[str], Awaitable[None]]


class AgentError(Exception):
    """An agent's own, expected failure: the run ends `failure` with exactly this message."""


class AgentConfigError(AgentError):
    """The run's agent_config is invalid; the message names the field."""


class ArtifactLimitError(AgentError):
    """An artifact is over the runner's per-file or per-run size limit."""


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
        settings: Any = None,
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
        self.settings = settings  # the runner's Settings (e.g. `settings.model` defaults); None in tests
        self.outputs: list[Any] = []  # outputs of the steps finished so far
        self.plan_version = 1  # the version the current/next plan gets
        # Plans sent back for revision, oldest first: {"version", "plan", "feedback"}.
        self.revisions: list[dict[str, Any]] = []
        self._artifact_writer = artifact_writer
        self._progress: ProgressReporter | None = None
        self._on_usage: Callable[[], None] | None = None  # the runner checks the run's budget

    async def write_artifact(
        self, name: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Store `data` as this run's artifact `name` (and announce it with an `artifact` event)."""
        if not valid_artifact_name(name):
            raise AgentError(
                f"invalid artifact name {name!r}: 1-200 characters, no / or \\, no control characters"
            )
        if not valid_content_type(content_type):
            raise AgentError(f"invalid artifact content type {content_type!r}: `type/subtype`, one line")
        if self._artifact_writer is None:
            raise AgentError("this context cannot store artifacts")
        await self._artifact_writer(name, bytes(data), content_type)

    async def report_progress(self, partial: str) -> None:
        """Report the text produced so far in this phase or step (e.g. streamed tokens).

        Cheap to call for every token: the runner emits at most one `progress` event per
        RUNNER_PROGRESS_INTERVAL_S (0.1 s) per run and drops the calls in between.
        """
        if self._progress is not None:
            await self._progress(partial)

    def report_usage(self, prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float = 0.0) -> None:
        """Add model usage; the totals end up in the run's terminal stats.

        A run whose totals pass its budget (`max_tokens`, `max_cost_usd`) is stopped here and now: the
        agent's work for the current phase or step is cancelled, model calls in flight included.
        """
        if self.usage is None:
            self.usage = Usage()
        self.usage.prompt_tokens += int(prompt_tokens)
        self.usage.completion_tokens += int(completion_tokens)
        self.usage.cost_usd += float(cost_usd)
        if self._on_usage is not None:
            self._on_usage()


class Agent:
    """Base class (and protocol) of every agent kind; one instance serves one run.

    `supports_resume`: execute_step may be called for the steps after the last
    finished one by a runner that did not plan the run (after a runner was lost).
    """

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # The type agent_config is converted to (a msgspec Struct); its JSON Schema is published by
    # GET /api/agents. None: no schema is published.
    config_type: ClassVar[type | None] = None
    supports_resume: ClassVar[bool] = False

    @classmethod
    def config_schema(cls) -> dict[str, Any] | None:
        return msgspec.json.schema(cls.config_type) if cls.config_type is not None else None

    async def plan(self, ctx: AgentContext) -> dict[str, Any]:
        """Return the plan: a dict with at least `steps`, a non-empty list (strings or dicts with `title`).

        On a revision `ctx.revisions` holds the plans sent back, with the approver's feedback.
        """
        raise NotImplementedError

    async def revise(self, ctx: AgentContext, plan: dict[str, Any], feedback: str | None) -> dict[str, Any]:
        """A new version of `plan` that addresses `feedback` (also the last entry of ctx.revisions)."""
        return await self.plan(ctx)

    async def execute_step(self, ctx: AgentContext, index: int, step: Any) -> Any:
        """Execute plan step `index` (0-based); return its output (JSON-serialisable)."""
        raise NotImplementedError

    async def finalize(self, ctx: AgentContext, outputs: list[Any]) -> Any:
        """Turn the step outputs into the run's results."""
        return {"outputs": outputs}

    async def aclose(self) -> None:
        """Release what the agent holds (HTTP clients...); called once when the run leaves this runner."""


def convert_config(raw: Any, config_type: type[T]) -> T:
    """agent_config as `config_type`, strictly (no "3" for 3); the error names the field."""
    try:
        return msgspec.convert(raw if raw is not None else {}, config_type, strict=True)
    except msgspec.ValidationError as exc:
        detail, _, where = str(exc).partition(" - at `$.")
        field = where.rstrip("`").split("[")[0]
        if field:
            raise AgentConfigError(f"invalid agent_config.{field}: {detail}") from None
        raise AgentConfigError(f"invalid agent_config: {detail}") from None


def step_title(index: int, step: Any) -> str:
    if isinstance(step, str):
        return step
    if isinstance(step, dict):
        for key in ("title", "name", "description"):
            if isinstance(step.get(key), str):
                return step[key]
    return f"Step {index + 1}"

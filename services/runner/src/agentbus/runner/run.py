"""One run, from `analysis_start` to its terminal event, checkpointed after every event.

The checkpoint makes a run resumable by any runner: a redelivered run continues
at the next seq and in the phase it was in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec

from agentbus.common import tracing
from agentbus.contracts import (
    AnalysisStart,
    Completion,
    PlanReady,
    Progress,
    RunControl,
    RunStart,
    Timeout,
)
from agentbus.contracts.events import CompletionData, PlanData, ProgressData, TimeoutData
from agentbus.runner.agents import (
    Agent,
    AgentConfigError,
    AgentError,
    AgentRegistry,
    UnknownAgentError,
    step_title,
)
from agentbus.runner.approval import RunApproval, RunParked
from agentbus.runner.budget import overrun
from agentbus.runner.progress import ProgressReporter
from agentbus.runner.record import since, utcnow
from agentbus.runner.store import BusError, Checkpoint, RunLostError

__all__ = ["AgentFailedError", "RunExecution", "RunParked"]
log = logging.getLogger(__name__)
T = TypeVar("T")


class AgentFailedError(Exception):
    """The agent failed; the message is what the `failure` event says."""


class RunExecution(RunApproval):
    def __init__(self, start: RunStart, *, registry: AgentRegistry, **record: Any) -> None:
        """`record`: what `RunRecord` takes (js, kv, obs, runner_id, settings, token, store)."""
        super().__init__(start, **record)
        self.registry = registry
        self.progress = ProgressReporter(self, getattr(self.settings, "progress_interval_s", 0.1))
        self.ctx._progress = self.progress
        self.ctx._on_usage = self._usage_reported
        self._agent_work: asyncio.Future[Any] | None = None  # the agent call being awaited

    # --- the run -----------------------------------------------------------------------------------

    async def run(
        self, loaded: Checkpoint | None, stored: RunControl | None, decision: RunControl | None = None
    ) -> None:
        """Drive the run to a terminal event (or find it finished), from its stored checkpoint,
        cancel and decision (`RunStore.load_all`).

        Raises CancelledError when the runner hands the run back (shutdown), RunLostError when another
        runner took it over, BusError when NATS stayed unreachable: in all three the run is not finished.
        Raises RunParked when it waits for a person: parked, held by no one.
        """
        # Read just now, for a run that was waiting: its first wait for a decision need not read them
        # again (a decision stored since is found by the read after parking, see _wait_for_decision).
        waiting = loaded is not None and loaded.phase == "awaiting_approval"
        self._prefetched = [stored, decision] if waiting else None
        if loaded is not None:
            self.cp = loaded
            if self.finished:
                return
            if loaded.parked or loaded.holder != self.token:
                await self._claim()  # woken (or first taken since holders were recorded)
            log.info("run %s: resuming at seq %d in phase %s", self.run_id, self.cp.seq, self.cp.phase)
        try:
            # The gateway stores a cancel before announcing it: one made while no runner held the
            # run (or before this delivery) is found here.
            if stored is not None:
                self.request_cancel(stored.reason)
            if self.cancel_reason is not None:
                await self._cancelled()
                return
            await self._drive(resumed=loaded is not None)
        except asyncio.CancelledError:
            if self.cancel_reason is None or self.finished:
                raise  # a shutdown, not a user cancel
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._cancelled()
        except (BusError, RunLostError, RunParked):
            raise
        except Exception as exc:  # our own bug or an unencodable payload: end the run rather than loop
            log.exception("run %s: internal error", self.run_id)
            if not self.finished:
                await self._fail(f"internal runner error: {type(exc).__name__}: {exc}")

    async def _drive(self, resumed: bool) -> None:
        kind = self.start.agent
        try:
            agent = self.registry.create(kind)
        except UnknownAgentError as exc:
            if self.cp.seq == 0:
                await self._emit(AnalysisStart, None, "Analysing the task", phase="planning")
            await self._fail(str(exc))
            return
        if resumed and self.cp.phase in ("planning", "executing") and not agent.supports_resume:
            await self._fail(f"runner lost while executing; agent {kind} cannot resume")
            return
        self.ctx.usage = msgspec.structs.replace(self.cp.usage) if self.cp.usage else None
        self.ctx.plan, self.ctx.feedback = self.cp.plan, self.cp.feedback
        self.ctx.outputs, self.ctx.revisions = list(self.cp.outputs), list(self.cp.revisions)
        try:
            # A plan sent back for revision returns to planning: a new version, a new approval.
            while self.cp.phase in ("new", "planning", "awaiting_approval"):
                if self.cp.phase in ("new", "planning"):
                    await self._within_work_budget(self._plan(agent))
                if self.cp.phase == "awaiting_approval":
                    await self._approval()
            if self.cp.phase == "executing":
                results = await self._within_work_budget(self._execute(agent))
                if self.finished:  # timed out
                    return
                await self._finish(
                    Completion,
                    lambda s: CompletionData(results=results, duration=s.duration, stats=s),
                    "Run completed",
                )
        except AgentFailedError as exc:
            if self.overrun is not None:
                await self._fail(**self.overrun.failure())
            else:
                await self._fail(str(exc))
        finally:
            try:
                await agent.aclose()
            except Exception:
                log.warning("run %s: agent %s failed to close", self.run_id, kind, exc_info=True)

    async def _within_work_budget(self, work: Awaitable[T]) -> T | None:
        """Bound working time by timeout_s; time spent waiting for a human does not count."""
        now = utcnow()
        waited = self.cp.approval_wait if self.cp.approval_wait is not None else self.cp.approval_wait_before
        worked = since(self.cp.started_at, now) - waited
        deadline = asyncio.timeout(self.start.timeout_s - worked)
        try:
            async with deadline:
                return await work
        except TimeoutError:
            if not deadline.expired() or self.finished:
                raise
            await self._finish(Timeout, lambda s: TimeoutData(phase="execution", stats=s), "Run timed out")
            return None

    async def _plan(self, agent: Agent) -> None:
        with tracing.span("plan", attributes={"agentbus.plan_version": len(self.cp.revisions) + 1}):
            await self._plan_now(agent)

    async def _plan_now(self, agent: Agent) -> None:
        if self.cp.phase == "new":
            await self._emit(AnalysisStart, None, "Analysing the task", phase="planning")
        version = len(self.cp.revisions) + 1
        self.ctx.plan_version = version
        self.progress.at(0, 0, 0.0, "planning", None)
        if self.cp.revisions:
            last = self.cp.revisions[-1]
            work = agent.revise(self.ctx, last["plan"], last.get("feedback"))
            plan = await self._call(f"revising the plan (version {version})", work)
        else:
            plan = await self._call("planning", agent.plan(self.ctx))
        if not isinstance(plan, dict) or not isinstance(plan.get("steps"), list) or not plan["steps"]:
            raise AgentFailedError(
                f"agent {agent.kind} returned an invalid plan: need a non-empty `steps` list"
            )
        plan = self._jsonable(plan, "the plan")
        self.ctx.plan = plan
        approval = self.start.require_approval
        suffix = f" (version {version})" if version > 1 else ""
        await self._emit(
            PlanReady,
            PlanData(plan=plan, version=version),
            ("Plan ready for review" if approval else "Plan ready") + suffix,
            plan=plan,
            plan_version=version,
            phase="awaiting_approval" if approval else "executing",
        )

    async def _execute(self, agent: Agent) -> Any:
        steps: list[Any] = (self.cp.plan or {}).get("steps", [])
        total = len(steps)
        for index in range(self.cp.steps_done, total):
            title = step_title(index, steps[index])
            with tracing.span(f"step {index + 1}/{total}", attributes={"agentbus.step.title": title}):
                await self._step(agent, steps, index, title)
        self.ctx.outputs = list(self.cp.outputs)
        self.progress.at(total, total, 100.0, "finalizing", None)
        with tracing.span("finalize"):
            results = await self._call("finalizing", agent.finalize(self.ctx, list(self.cp.outputs)))
        return self._jsonable(results, "the results")

    async def _step(self, agent: Agent, steps: list[Any], index: int, title: str) -> None:
        total = len(steps)
        self.ctx.outputs = list(self.cp.outputs)
        self.progress.at(index + 1, total, round(100 * index / total, 1), "executing", title)
        output = await self._call(
            f"step {index + 1}/{total} '{title}'", agent.execute_step(self.ctx, index, steps[index])
        )
        output = self._jsonable(output, f"the output of step {index + 1}")
        await self._emit(
            Progress,
            ProgressData(
                step=index + 1,
                total_steps=total,
                progress_percent=round(100 * (index + 1) / total, 1),
                current_phase="executing",
                title=title,
            ),
            f"Step {index + 1}/{total} done: {title}",
            steps_done=index + 1,
            outputs=[*self.cp.outputs, output],
        )

    def _usage_reported(self) -> None:
        """The agent reported usage: a run that passed its budget stops now, model calls in flight
        included (the agent's call is cancelled; `_call` turns that into the run's `failure`)."""
        if self.overrun is not None or self.finished:
            return
        self.overrun = overrun(self.start, self.ctx.usage)
        if self.overrun is not None:
            log.info("run %s: %s; stopping it", self.run_id, self.overrun.error)
            if self._agent_work is not None:
                self._agent_work.cancel()

    async def _call(self, what: str, work: Awaitable[T]) -> T:
        """Await agent code, turning its errors into one clear message (the traceback goes to the log).

        The agent's code runs as a task of its own, so that passing the budget can cancel it from
        wherever the agent reports usage (this task, or one of its own next to a call in flight).
        """
        call = self._agent_work = asyncio.ensure_future(work)
        try:
            result = await call
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.overrun is not None and current is not None and not current.cancelling():
                raise AgentFailedError(self.overrun.error) from None  # only the agent was cancelled
            raise
        except (BusError, RunLostError):
            raise
        except Exception as exc:
            if self.overrun is not None:
                raise AgentFailedError(self.overrun.error) from None
            raise self._failed(what, exc) from None
        finally:
            self._agent_work = None
        if self.overrun is not None:  # an agent that went on after it was cancelled
            raise AgentFailedError(self.overrun.error)
        return result

    def _failed(self, what: str, exc: Exception) -> AgentFailedError:
        """The agent's error as one clear message (the traceback of an unexpected one goes to the log)."""
        if isinstance(exc, AgentConfigError):
            return AgentFailedError(str(exc))
        if isinstance(exc, AgentError):
            return AgentFailedError(f"{what} failed: {exc}")
        log.warning(
            "run %s: agent %s raised while %s",
            self.run_id,
            self.start.agent,
            what,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return AgentFailedError(f"{what} failed: {type(exc).__name__}: {exc}")

    @staticmethod
    def _jsonable(value: Any, what: str) -> Any:
        try:
            return msgspec.to_builtins(value)
        except TypeError as exc:
            raise AgentFailedError(f"{what} is not JSON-serialisable: {exc}") from None

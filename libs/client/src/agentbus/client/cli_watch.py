"""`agentbus runs watch`: the plan, a live progress bar per step, and the approval prompt."""

from __future__ import annotations

import sys
from typing import Any

from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from agentbus.client.cli_common import EXIT_OF_STATUS, EXIT_OF_TERMINAL_EVENT, STOPPED, err, out, print_json
from agentbus.client.errors import Conflict
from agentbus.client.events import TERMINAL_EVENT_TYPES, RunEvent, as_dict, event_type
from agentbus.client.sync import Client

PROMPT = "Approve this plan? [y/N/e(dit feedback)] "


def step_title(step: Any, index: int) -> str:
    if isinstance(step, dict):
        for key in ("title", "name", "description"):
            if isinstance(step.get(key), str):
                return step[key]
    return str(step) if step is not None else f"Step {index}"


class Bars:
    """One bar per step of the plan, and one for the whole run."""

    def __init__(self, steps: list[Any]) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), console=out
        )
        self.overall = self.progress.add_task("run", total=100)
        self.steps: list[TaskID] = [
            self.progress.add_task(f"  {step_title(s, i)}", total=1) for i, s in enumerate(steps, 1)
        ]
        self.progress.start()

    def update(self, data: Any) -> None:
        step, total = int(getattr(data, "step", 0)), int(getattr(data, "total_steps", 0) or 0)
        while len(self.steps) < total:  # the agent has more steps than its plan listed
            self.steps.append(self.progress.add_task(f"  Step {len(self.steps) + 1}", total=1))
        for i, task in enumerate(self.steps, 1):
            if i <= step:
                self.progress.update(task, completed=1)
        self.progress.update(self.overall, completed=float(getattr(data, "progress_percent", 0.0)))

    def finish(self, completed: bool) -> None:
        if completed:
            self.progress.update(self.overall, completed=100)
        self.progress.stop()


class Watcher:
    def __init__(self, client: Client, run_id: str, *, yes: bool, prompt: bool, as_json: bool) -> None:
        self.client, self.run_id, self.yes, self.as_json = client, run_id, yes, as_json
        # No prompt without a terminal, nor in JSON mode (its lines are for a program).
        self.prompt = prompt and not as_json and sys.stdin.isatty()
        self.steps: list[Any] = []
        self.bars: Bars | None = None

    def run(self) -> int:
        outcome: str | None = None
        try:
            for event in self.client.watch(self.run_id):
                kind = event_type(event)
                if self.as_json:
                    print_json(as_dict(event))
                else:
                    self.show(kind, event)
                if kind == "approval_required":
                    self.decide()
                if kind in TERMINAL_EVENT_TYPES:
                    outcome = kind
                    break
        finally:
            if self.bars is not None:
                self.bars.finish(outcome == "completion")
                self.bars = None
        if outcome is None:  # the run had ended before (watched from past its last event)
            return EXIT_OF_STATUS.get(self.client.get_run(self.run_id).status, STOPPED)
        if not self.as_json:
            self.summary(outcome)
        return EXIT_OF_TERMINAL_EVENT.get(outcome, STOPPED)

    def show(self, kind: str, event: RunEvent) -> None:
        data: Any = getattr(event, "data", None)
        if kind == "plan_ready":
            plan = data.plan if hasattr(data, "plan") else {}
            self.steps = list(plan.get("steps") or []) if isinstance(plan, dict) else []
            out.print(f"Plan (version {getattr(data, 'version', 1)}):", markup=False)
            for i, step in enumerate(self.steps, 1):
                out.print(f"  {i}. {step_title(step, i)}", markup=False)
        elif kind == "approval_required":
            out.print(f"Waiting for approval (deadline in {data.timeout_s:g} s)", markup=False)
        elif kind in ("approved", "rejected"):
            feedback = getattr(data, "feedback", None)
            out.print(f"Plan {kind}" + (f": {feedback}" if feedback else ""), markup=False)
        elif kind == "revision_requested":
            out.print(f"Plan sent back for revision: {getattr(data, 'feedback', '') or ''}", markup=False)
        elif kind == "progress":
            if self.bars is None:
                self.bars = Bars(self.steps)
            self.bars.update(data)
        elif kind == "analysis_start":
            out.print("Planning...", markup=False)
        elif kind == "artifact":
            out.print(f"Artifact {data.name} ({data.size} bytes)", markup=False)

    def decide(self) -> None:
        try:
            if self.yes:
                self.client.approve(self.run_id)
            elif self.prompt:
                self.ask()
        except Conflict as exc:  # decided meanwhile (someone else, or the deadline)
            err.print(f"not decided: {exc.detail}", markup=False)

    def ask(self) -> None:
        try:
            answer = input(PROMPT).strip().lower()
        except EOFError:
            answer = "n"
        if answer in ("y", "yes"):
            self.client.approve(self.run_id)
        elif answer in ("e", "edit"):
            try:
                feedback = input("Feedback for the next version of the plan: ").strip()
            except EOFError:
                feedback = ""
            self.client.revise(self.run_id, feedback or "please revise the plan")
        else:
            self.client.reject(self.run_id)

    def summary(self, outcome: str) -> None:
        run = self.client.get_run(self.run_id)
        if outcome == "completion":
            out.print(f"Run {run.id} completed in {run.duration or 0:.1f} s", markup=False)
        else:
            detail = f": {run.error_message}" if run.error_message else ""
            err.print(f"Run {run.id} {run.status}{detail}", markup=False)

"""A tiny multi-role team, independent of agentbus: it stands in for the agent framework you already have.

Three roles share one model (any `complete(messages, response_format)` coroutine):
the planner breaks the brief into steps, the coder carries out a step, the
reviewer checks the coder's work and may send it back (up to `review_rounds`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Complete = Callable[[list[dict[str, Any]], dict[str, Any] | None], Awaitable[str]]

PLAN_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "plan",
        "strict": True,
        "schema": {
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
        },
    },
}


class TeamError(Exception):
    """The team could not do its job; the message says why."""


@dataclass(frozen=True)
class Role:
    name: str
    instructions: str

    def messages(self, prompt: str) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.instructions}, {"role": "user", "content": prompt}]


PLANNER = Role(
    "planner",
    "You are the planner of a small software team. Split the brief into at most {max_steps} steps "
    'for the coder. Answer with JSON only: {{"steps": [{{"title": "...", "description": "..."}}]}}.',
)
CODER = Role("coder", "You are the coder of a small software team. Carry out the step you are given.")
REVIEWER = Role(
    "reviewer",
    "You are the reviewer of a small software team. Check the coder's work for the step. Answer "
    "APPROVE if it is good, otherwise REVISE: followed by what must change.",
)


@dataclass
class WorkResult:
    output: str
    reviews: list[str] = field(default_factory=list)


class Team:
    def __init__(self, complete: Complete, review_rounds: int = 1) -> None:
        self.complete = complete
        self.review_rounds = review_rounds

    async def plan(self, brief: str, max_steps: int, feedback: list[str]) -> list[dict[str, str]]:
        prompt = brief
        for note in feedback:
            prompt += f"\n\nThe plan was sent back with this feedback: {note}"
        role = Role(PLANNER.name, PLANNER.instructions.format(max_steps=max_steps))
        messages = role.messages(prompt)
        for _ in range(2):  # one second chance for a malformed answer
            text = await self.complete(messages, PLAN_FORMAT)
            try:
                steps = json.loads(text)["steps"]
                if not steps or len(steps) > max_steps:
                    raise ValueError(f"{len(steps)} steps, want 1 to {max_steps}")
                return [
                    {"title": str(s["title"]), "description": str(s.get("description", ""))} for s in steps
                ]
            except (ValueError, KeyError, TypeError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                messages = [
                    *messages,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"Invalid ({error}). Answer with the JSON plan only."},
                ]
        raise TeamError(f"the planner gave no valid plan: {error}")

    async def work(self, brief: str, plan: str, step: dict[str, str], earlier: str) -> WorkResult:
        task = f"{brief}\n\nPlan:\n{plan}\n\nDone so far:\n{earlier or '(nothing yet)'}\n\n"
        task += f"Your step: {step['title']}\n{step.get('description', '')}"
        draft = await self.complete(CODER.messages(task), None)
        result = WorkResult(draft)
        for _ in range(self.review_rounds):
            verdict = await self.complete(REVIEWER.messages(f"{task}\n\nThe coder's work:\n{draft}"), None)
            result.reviews.append(verdict.strip())
            if not verdict.strip().upper().startswith("REVISE"):
                break
            fix = f"{task}\n\nYour draft:\n{draft}\n\nThe reviewer says:\n{verdict}\n\n"
            fix += "Write the corrected work."
            draft = result.output = await self.complete(CODER.messages(fix), None)
        return result

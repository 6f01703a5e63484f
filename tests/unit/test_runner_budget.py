"""A run's budget without a broker: when usage passes it, and what the `failure` then says."""

from __future__ import annotations

import pytest

from agentbus.contracts import RunStart
from agentbus.runner.agents import AgentContext
from agentbus.runner.agents.base import Usage
from agentbus.runner.budget import overrun


def start(**budget: object) -> RunStart:
    return RunStart(run_id="r", task_id="t", run_number=1, task_name="x", **budget)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("budget", "usage", "error"),
    [
        ({}, Usage(prompt_tokens=10**9, cost_usd=10.0**6), None),  # no cap
        ({"max_tokens": 40}, None, None),  # nothing reported yet
        ({"max_tokens": 45}, Usage(prompt_tokens=30, completion_tokens=15), None),  # at the cap: within
        ({"max_tokens": 40}, Usage(prompt_tokens=30, completion_tokens=15), "45 tokens, over max_tokens 40"),
        ({"max_tokens": 0}, Usage(completion_tokens=1), "1 tokens, over max_tokens 0"),
        ({"max_cost_usd": 0.01}, Usage(prompt_tokens=10**6, cost_usd=0.01), None),
        ({"max_cost_usd": 0.01}, Usage(cost_usd=0.0125), "0.0125 USD, over max_cost_usd 0.01"),
        (
            {"max_tokens": 10, "max_cost_usd": 0.0},
            Usage(prompt_tokens=11, cost_usd=0.00024 + 0.0006),
            "11 tokens, over max_tokens 10; 0.00084 USD, over max_cost_usd 0",
        ),
    ],
)
def test_passing_either_cap_is_an_overrun(budget: dict, usage: Usage | None, error: str | None) -> None:
    over = overrun(start(**budget), usage)
    if error is None:
        assert over is None
        return
    assert over is not None and over.error == f"budget exceeded: {error}"
    assert over.failure() == {
        "error": over.error,
        "reason": "budget",
        "tokens": usage.prompt_tokens + usage.completion_tokens,  # type: ignore[union-attr]
        "cost_usd": usage.cost_usd,  # type: ignore[union-attr]
    }


def test_each_report_is_checked_on_the_running_totals() -> None:
    ctx = AgentContext(start(max_tokens=40))
    seen: list[int] = []
    ctx._on_usage = lambda: seen.append(ctx.usage.prompt_tokens + ctx.usage.completion_tokens)  # type: ignore[union-attr]
    for _ in range(3):
        ctx.report_usage(10, 5)
    assert seen == [15, 30, 45]
    assert overrun(ctx.start, ctx.usage) is not None

"""A run's budget: `max_tokens` (prompt + completion) and `max_cost_usd`, checked at each usage report.

A run whose reported usage passes either ends `failed`, with `error_message` starting
`budget exceeded` and `failure` data `{"error", "reason": "budget", "tokens", "cost_usd"}`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from agentbus.contracts import RunStart
from agentbus.runner.agents.base import Usage


class Overrun(NamedTuple):
    """The usage that passed the budget, and the `failure` it ends the run with."""

    tokens: int
    cost_usd: float
    error: str

    def failure(self) -> dict[str, Any]:
        """The `failure` data fields besides `stats`."""
        return {"error": self.error, "reason": "budget", "tokens": self.tokens, "cost_usd": self.cost_usd}


def overrun(start: RunStart, usage: Usage | None) -> Overrun | None:
    """The overrun when `usage` passes the run's budget (strictly more than a cap), else None."""
    if usage is None or (start.max_tokens is None and start.max_cost_usd is None):
        return None
    tokens = usage.prompt_tokens + usage.completion_tokens
    cost = usage.cost_usd
    over = []
    if start.max_tokens is not None and tokens > start.max_tokens:
        over.append(f"{tokens} tokens, over max_tokens {start.max_tokens}")
    if start.max_cost_usd is not None and cost > start.max_cost_usd:
        over.append(f"{cost:.6g} USD, over max_cost_usd {start.max_cost_usd:g}")
    if not over:
        return None
    return Overrun(tokens, cost, "budget exceeded: " + "; ".join(over))

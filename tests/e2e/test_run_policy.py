"""A user's view of a task's approval deadline policy and budget, against the real processes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.client import Api, assert_gapless
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

FAST = {"steps": 2, "step_delay_ms": 20}


@pytest.mark.parametrize(("policy", "status"), [("reject", "rejected"), ("approve", "completed")])
async def test_the_deadline_decides_as_the_task_says(api: Api, policy: str, status: str) -> None:
    task = await api.task(agent_config=FAST, approval_timeout_s=1, on_approval_timeout=policy)
    assert task["on_approval_timeout"] == policy
    run = await api.run(task["id"])
    final = await api.wait_status(run["id"], status)
    approval = final["approval"]
    assert approval["approved"] is (policy == "approve")
    assert approval["decided_by"] is None, "no one decided: the deadline's policy did"
    assert approval["feedback"] == f"no decision within the approval deadline (on_approval_timeout: {policy})"
    logs = await api.logs(run["id"])
    assert_gapless(logs)
    assert logs[3]["event_type"] == ("approved" if policy == "approve" else "rejected")
    assert logs[-1]["data"]["stats"]["approval_wait"] >= 1


async def test_a_run_past_its_token_budget_fails_with_its_usage_recorded(api: Api) -> None:
    task = await api.task(
        require_approval=False, agent_config={"steps": 5, "step_delay_ms": 0}, max_tokens=40
    )
    assert task["max_tokens"] == 40
    run = await api.run(task["id"])
    final = await api.wait_status(run["id"], "failed")
    assert final["error_message"] == "budget exceeded: 45 tokens, over max_tokens 40"
    logs = await api.logs(run["id"])
    assert [e["event_type"] for e in logs] == [
        "analysis_start",
        "plan_ready",
        "progress",
        "progress",
        "failure",
    ]
    data = logs[-1]["data"]
    assert (data["reason"], data["tokens"], data["cost_usd"]) == ("budget", 45, 0.0)

    async def summary() -> dict[str, Any] | None:  # the metrics of any failure: stats included
        r = await api.http.get(f"/api/metrics/run/{run['id']}/summary")
        body = r.json()
        return body if r.status_code == 200 and "tokens_prompt" in body["metrics"] else None

    metrics = (await eventually(summary, what="the run's metrics"))["metrics"]
    assert (
        metrics["steps"]["last"],
        metrics["tokens_prompt"]["last"],
        metrics["tokens_completion"]["last"],
    ) == (
        2,
        30,
        15,
    )
    stored = (await api.http.get(f"/api/tasks/{task['id']}")).json()
    assert stored["failed_runs"] == 1 and stored["last_error"] == final["error_message"]

"""The `RunStart` of a run: what a runner gets to execute it (its record in KV and its message)."""

from __future__ import annotations

from typing import Any

from agentbus.contracts import RunStart


def run_start(task: Any, run: Any) -> RunStart:
    """`task`: the task's row; `run`: the run's row, or the values it is being created with (both
    by attribute). The run's own settings were fixed when it was created; the task's are read now:
    a run held under `max_concurrent_runs` starts with its task's settings as they are when it is
    released."""
    return RunStart(
        run_id=run.id,
        task_id=task.id,
        run_number=run.run_number,
        task_name=task.name,
        task_description=task.description,
        task_config=task.config or {},
        agent=run.agent,
        agent_config=run.agent_config or {},
        require_approval=run.require_approval,
        approval_timeout_s=task.approval_timeout_s,
        timeout_s=task.timeout_s,
        max_rounds=task.max_rounds,
        max_revision_rounds=run.max_revision_rounds,
        on_approval_timeout=task.on_approval_timeout,
        max_tokens=task.max_tokens,
        max_cost_usd=task.max_cost_usd,
        created_at=run.created_at,
        traceparent=getattr(run, "traceparent", None),  # the runner continues the creating request's trace
    )

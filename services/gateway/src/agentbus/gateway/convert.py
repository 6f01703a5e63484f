"""Rows to REST structs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agentbus.contracts import RunControl
from agentbus.gateway.schemas import Actor, Approval, ApprovalItem, ArtifactInfo, Run, Task


def task_out(row: Any) -> Task:
    total = row.total_runs or 0
    return Task(
        id=row.id,
        name=row.name,
        description=row.description,
        config=row.config or {},
        agent=row.agent,
        agent_config=row.agent_config or {},
        require_approval=row.require_approval,
        approval_timeout_s=row.approval_timeout_s,
        timeout_s=row.timeout_s,
        max_rounds=row.max_rounds,
        max_revision_rounds=row.max_revision_rounds,
        on_approval_timeout=row.on_approval_timeout,
        approvers=row.approvers or [],
        approval_by_other=row.approval_by_other,
        max_tokens=row.max_tokens,
        max_cost_usd=row.max_cost_usd,
        max_concurrent_runs=row.max_concurrent_runs,
        status=row.status,
        total_runs=total,
        successful_runs=row.successful_runs or 0,
        failed_runs=row.failed_runs or 0,
        success_rate=round((row.successful_runs or 0) / total, 4) if total else 0.0,
        last_run_at=row.last_run_at,
        last_run_duration=row.last_run_duration,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def approval_out(value: dict[str, Any] | None) -> Approval | None:
    if not value:
        return None
    return Approval(
        approved=bool(value.get("approved")),
        feedback=value.get("feedback"),
        decided_at=datetime.fromisoformat(value["decided_at"].replace("Z", "+00:00")),
        revise=bool(value.get("revise", False)),
        plan_version=value.get("plan_version"),
        decided_by=actor_out(value.get("decided_by")),
    )


def actor_out(value: dict[str, Any] | None) -> Actor | None:
    return Actor(id=value["id"], name=value["name"]) if value else None


def approval_item_out(row: Any) -> ApprovalItem:
    return ApprovalItem(
        id=row.id,
        run_id=row.run_id,
        task_id=row.task_id,
        plan=row.plan,
        plan_version=row.plan_version,
        status=row.status,
        requested_at=row.requested_at,
        deadline=row.deadline,
        decided_at=row.decided_at,
        decided_by=actor_out(row.decided_by),
        feedback=row.feedback,
    )


def run_out(row: Any) -> Run:
    return Run(
        id=row.id,
        task_id=row.task_id,
        run_number=row.run_number,
        status=row.status,
        agent=row.agent,
        require_approval=row.require_approval,
        max_revision_rounds=row.max_revision_rounds,
        plan=row.plan,
        progress=row.progress or 0.0,
        results=row.results,
        error_message=row.error_message,
        started_at=row.started_at,
        completed_at=row.completed_at,
        duration=row.duration,
        approval=approval_out(row.approval),
        labels=row.labels or {},
        last_seq=row.last_seq or 0,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def artifact_out(row: Any) -> ArtifactInfo:
    return ArtifactInfo(
        name=row.name, size=row.size, content_type=row.content_type, created_at=row.created_at
    )


def decision_of(run_id: str, approval: dict[str, Any]) -> RunControl:
    """The bus message for a decision stored on a run (its `approval` column)."""
    return RunControl(
        run_id=run_id,
        kind="approve" if approval.get("approved") else "reject",
        feedback=approval.get("feedback"),
        decided_at=datetime.fromisoformat(approval["decided_at"].replace("Z", "+00:00")),
        revise=bool(approval.get("revise", False)),
        plan_version=approval.get("plan_version"),
    )

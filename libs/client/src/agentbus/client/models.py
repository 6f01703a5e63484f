"""What the gateway answers, as msgspec structs: the client's mirror of the public REST contract.

The request and response shapes live in the gateway (a service, which a library must not import),
so they are mirrored here. Decoding ignores fields it does not know and every field added after
v1 has a default, so a newer gateway keeps working with this client. Metrics shapes and run events
are the shared ones from `agentbus.contracts`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec

from agentbus.contracts.messages import MetricOut, MetricsReport, MetricsSeries, MetricsSummary

__all__ = [
    "Actor",
    "ApprovalItem",
    "ArtifactInfo",
    "AuditItem",
    "Decision",
    "Health",
    "Key",
    "Me",
    "MetricOut",
    "MetricsReport",
    "MetricsSeries",
    "MetricsSummary",
    "NewKey",
    "Page",
    "Ready",
    "Run",
    "Task",
]

T = TypeVar("T")


class Page(msgspec.Struct, Generic[T], kw_only=True):
    """A page of any list: `next_cursor` (None on the last page) goes back as `cursor=`."""

    items: list[T]
    total: int
    skip: int = 0
    limit: int = 0
    next_cursor: str | None = None


class Task(msgspec.Struct, kw_only=True):
    id: str
    name: str
    description: str | None = None
    config: dict[str, Any] = {}
    agent: str | None = None
    agent_config: dict[str, Any] = {}
    require_approval: bool = True
    approval_timeout_s: int = 300
    timeout_s: int = 3600
    max_rounds: int = 5
    max_revision_rounds: int = 2
    on_approval_timeout: str = "timeout"
    approvers: list[str] = []
    approval_by_other: bool = False
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    max_concurrent_runs: int | None = None
    status: str = "pending"
    total_runs: int = 0
    successful_runs: int = 0
    failed_runs: int = 0
    success_rate: float = 0.0
    last_run_at: datetime | None = None
    last_run_duration: float | None = None
    last_error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Actor(msgspec.Struct, kw_only=True):
    id: str
    name: str


class Decision(msgspec.Struct, kw_only=True):
    """A run's `approval`: the decision on its plan."""

    approved: bool
    feedback: str | None = None
    decided_at: datetime | None = None
    revise: bool = False
    plan_version: int | None = None
    decided_by: Actor | None = None


class Run(msgspec.Struct, kw_only=True):
    id: str
    task_id: str
    run_number: int
    status: str
    agent: str | None = None
    require_approval: bool = True
    max_revision_rounds: int = 2
    plan: dict[str, Any] | None = None
    progress: float = 0.0
    results: Any = None
    error_message: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration: float | None = None
    approval: Decision | None = None
    labels: dict[str, str] = {}
    last_seq: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ApprovalItem(msgspec.Struct, kw_only=True):
    id: str
    run_id: str
    task_id: str
    plan: dict[str, Any] | None = None
    plan_version: int | None = None
    status: str = "pending"
    requested_at: datetime | None = None
    deadline: datetime | None = None
    decided_at: datetime | None = None
    decided_by: Actor | None = None
    feedback: str | None = None


class ArtifactInfo(msgspec.Struct, kw_only=True):
    name: str
    size: int
    content_type: str
    created_at: datetime | None = None


class Key(msgspec.Struct, kw_only=True):
    id: str
    name: str
    role: str
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    created_by: dict[str, Any] | None = None


class NewKey(Key, kw_only=True):
    key: str  # the secret: shown in this answer only


class Me(msgspec.Struct, kw_only=True):
    id: str
    name: str
    role: str


class AuditItem(msgspec.Struct, kw_only=True):
    id: str
    at: datetime
    actor: dict[str, Any]
    action: str
    target_type: str | None = None
    target_id: str | None = None
    detail: dict[str, Any] | None = None


class Health(msgspec.Struct, kw_only=True):
    status: str
    version: str | None = None
    timestamp: datetime | None = None


class Ready(msgspec.Struct, kw_only=True):
    """`/ready`: `status` is "ready" only when every check holds (a 503 is returned as this too,
    with `detail` naming what does not answer)."""

    status: str = "unavailable"
    checks: dict[str, bool] = {}
    timings: dict[str, float] = {}
    detail: str | None = None


def to_builtins(obj: Any) -> Any:
    """JSON-ready builtins of a decoded answer (structs, lists of them, dicts)."""
    return msgspec.to_builtins(obj)

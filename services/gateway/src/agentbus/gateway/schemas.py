"""REST shapes. Input structs forbid unknown fields (a typo is an error); output structs are plain."""

from __future__ import annotations

import copy
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar.openapi.spec import Operation
from msgspec import UNSET, Meta, UnsetType

from agentbus.contracts.kinds import AgentKind  # the one agent-kind rule, shared with runner and subjects
from agentbus.contracts.status import RunStatus

Name = Annotated[str, Meta(min_length=1, max_length=200)]
ApprovalTimeout = Annotated[int, Meta(ge=1, le=86400)]
RunTimeout = Annotated[int, Meta(ge=1, le=604800)]
MaxRounds = Annotated[int, Meta(ge=1, le=100)]
MaxRevisionRounds = Annotated[int, Meta(ge=0, le=10)]
Description = Annotated[str, Meta(max_length=10000)]
Labels = dict[Annotated[str, Meta(min_length=1, max_length=100)], Annotated[str, Meta(max_length=500)]]
TaskStatus = RunStatus  # a task shows its latest run's status
OnApprovalTimeout = Literal["timeout", "reject", "approve"]
# Who may decide: role names, key ids or JWT identities (`check_approvers`); empty: any approver.
APPROVER_RULE = (
    "a role name (viewer, operator, approver, admin), a key id (32 lowercase hex digits) "
    "or a JWT identity (jwt:<sub>)"
)
# A search, as JSON Schema reads a pattern; `$(?!\n)` ends it in Python as in ECMAScript.
APPROVER_PATTERN = r"^(viewer|operator|approver|admin|[0-9a-f]{32}|jwt:[\s\S]{1,150})$(?!\n)"
_APPROVER = re.compile(APPROVER_PATTERN)
# The pattern is documented, and checked by `check_approvers` (whose error names the entry).
Approvers = Annotated[
    list[
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=200,
                description=APPROVER_RULE,
                extra_json_schema={"pattern": APPROVER_PATTERN},
            ),
        ]
    ],
    Meta(max_length=100),
]
MaxTokens = Annotated[int, Meta(ge=1, le=10**12)]
MaxCost = Annotated[float, Meta(ge=0, le=10**9)]
MaxConcurrent = Annotated[int, Meta(ge=1, le=10000)]


def check_approvers(approvers: Any) -> None:
    """Raises ValueError naming the first entry of `approvers` that could never match anyone: each is
    one of the roles, an API key's id, or a JWT identity's id (`jwt:<sub>`, as `identity.py` makes
    it), since a decision is allowed when the decider's id or role is listed (`RunService.may_decide`).
    A typo ("aprover") would otherwise lock every approver out of the task's runs. The message ends
    as msgspec's do (`- at $.approvers[i]`), so the error names the field too."""
    if not isinstance(approvers, list):
        return
    for i, entry in enumerate(approvers):
        if not isinstance(entry, str) or not _APPROVER.search(entry):
            raise ValueError(f"approvers entry {entry!r} is not {APPROVER_RULE} - at `$.approvers[{i}]`")


class TaskCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    description: Description | None = None
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    agent: AgentKind | None = None
    agent_config: dict[str, Any] = msgspec.field(default_factory=dict)
    require_approval: bool = True
    approval_timeout_s: ApprovalTimeout = 300
    timeout_s: RunTimeout = 3600
    max_rounds: MaxRounds = 5
    max_revision_rounds: MaxRevisionRounds = 2
    on_approval_timeout: OnApprovalTimeout = "timeout"
    approvers: Approvers = msgspec.field(default_factory=list)
    approval_by_other: bool = False
    max_tokens: MaxTokens | None = None
    max_cost_usd: MaxCost | None = None
    max_concurrent_runs: MaxConcurrent | None = None

    def __post_init__(self) -> None:
        check_approvers(self.approvers)


class TaskUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name | UnsetType = UNSET
    description: Description | UnsetType | None = UNSET
    config: dict[str, Any] | UnsetType = UNSET
    agent: AgentKind | UnsetType = UNSET
    agent_config: dict[str, Any] | UnsetType = UNSET
    require_approval: bool | UnsetType = UNSET
    approval_timeout_s: ApprovalTimeout | UnsetType = UNSET
    timeout_s: RunTimeout | UnsetType = UNSET
    max_rounds: MaxRounds | UnsetType = UNSET
    max_revision_rounds: MaxRevisionRounds | UnsetType = UNSET
    on_approval_timeout: OnApprovalTimeout | UnsetType = UNSET
    approvers: Approvers | UnsetType = UNSET
    approval_by_other: bool | UnsetType = UNSET
    max_tokens: MaxTokens | UnsetType | None = UNSET
    max_cost_usd: MaxCost | UnsetType | None = UNSET
    max_concurrent_runs: MaxConcurrent | UnsetType | None = UNSET

    def __post_init__(self) -> None:
        check_approvers(self.approvers)


class Task(msgspec.Struct, kw_only=True):
    id: str
    name: str
    description: str | None
    config: dict[str, Any]
    agent: str
    agent_config: dict[str, Any]
    require_approval: bool
    approval_timeout_s: int
    timeout_s: int
    max_rounds: int
    max_revision_rounds: int
    on_approval_timeout: str
    approvers: list[str]
    approval_by_other: bool
    max_tokens: int | None
    max_cost_usd: float | None
    max_concurrent_runs: int | None
    status: str
    total_runs: int
    successful_runs: int
    failed_runs: int
    success_rate: float
    last_run_at: datetime | None
    last_run_duration: float | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class TaskPage(msgspec.Struct):
    items: list[Task]
    total: int
    skip: int
    limit: int
    # Pass it back as `cursor=` for the next page (same order, same cost however deep); None: last.
    next_cursor: str | None = None


class RunCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    task_id: Annotated[str, Meta(min_length=1, max_length=64)]
    require_approval: bool | None = None
    agent_config: dict[str, Any] | None = None
    labels: Labels = msgspec.field(default_factory=dict)


class RunUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    labels: Labels


class ApproveBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    approved: bool
    feedback: Annotated[str, Meta(max_length=10000)] | None = None
    # With approved: false, send the plan back for a new version instead of ending the run.
    revise: bool = False


# What ApproveBody's fields cannot say: `revise: true` goes with `approved: false` (else a 400).
REVISE_ONLY_REJECTED = {
    "not": {
        "required": ["approved", "revise"],
        "properties": {"approved": {"const": True}, "revise": {"const": True}},
    }
}


class CancelBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Annotated[str, Meta(max_length=1000)] | None = None


class Actor(msgspec.Struct, kw_only=True):
    id: str
    name: str


class Approval(msgspec.Struct, kw_only=True):
    approved: bool
    feedback: str | None
    decided_at: datetime
    revise: bool = False
    plan_version: int | None = None
    decided_by: Actor | None = None  # who decided; null: the deadline's policy (or before identities)


class PlanVersion(msgspec.Struct, kw_only=True):
    """One version of a run's plan and what became of it."""

    version: int
    plan: dict[str, Any]
    created_at: datetime
    status: Literal["pending", "approved", "rejected", "revised"]  # revised: sent back for a new version
    decision: Approval | None


class Run(msgspec.Struct, kw_only=True):
    id: str
    task_id: str
    run_number: int
    status: str
    agent: str
    require_approval: bool
    max_revision_rounds: int
    plan: dict[str, Any] | None
    progress: float
    results: Any
    error_message: str | None
    started_at: datetime | None
    completed_at: datetime | None
    duration: float | None
    approval: Approval | None
    labels: dict[str, str]
    last_seq: int
    created_at: datetime
    updated_at: datetime


class RunPage(msgspec.Struct):
    items: list[Run]
    total: int
    skip: int
    limit: int
    # Pass it back as `cursor=` for the next page (same order, same cost however deep); None: last.
    next_cursor: str | None = None


ApprovalStatus = Literal["pending", "approved", "rejected", "revise_requested", "expired", "cancelled"]


class ApprovalItem(msgspec.Struct, kw_only=True):
    """One plan version that waited for a decision: what the approvals inbox lists."""

    id: str
    run_id: str
    task_id: str
    plan: dict[str, Any] | None
    plan_version: int | None
    # expired: the deadline passed (on_approval_timeout: timeout); cancelled: the run ended first
    status: ApprovalStatus
    requested_at: datetime
    deadline: datetime | None
    decided_at: datetime | None
    decided_by: Actor | None  # null: no one (the deadline's policy, or the run's end)
    feedback: str | None


class ApprovalPage(msgspec.Struct):
    items: list[ApprovalItem]
    total: int
    skip: int
    limit: int
    # Pass it back as `cursor=` for the next page (same order, same cost however deep); None: last.
    next_cursor: str | None = None


class EventPage(msgspec.Struct):
    """Stored events, each exactly as it was published (the same bytes a WebSocket client got)."""

    items: list[msgspec.Raw]
    total: int


class AgentRunner(msgspec.Struct, kw_only=True):
    instance: str
    version: str
    active_runs: int  # runs of this kind it holds now
    max_concurrency: int | None  # its limit for this kind; null: only its overall capacity
    capacity: int  # runs it holds at most, of every kind


class AgentKindOut(msgspec.Struct, kw_only=True):
    kind: str
    description: str
    available: bool  # some runner serves it right now
    runners: list[AgentRunner]
    config_schema: dict[str, Any] | None
    supports_resume: bool
    total_runs: int
    finished_runs: int
    successful_runs: int
    success_rate: float  # successful / finished, 0 when none finished


class AgentPage(msgspec.Struct):
    items: list[AgentKindOut]
    total: int


class ArtifactInfo(msgspec.Struct):
    name: str
    size: int
    content_type: str
    created_at: datetime


class Error(msgspec.Struct, kw_only=True):
    """Every 4xx and 5xx answer. `extra`: what was wrong, field by field, when the input was."""

    status_code: int
    detail: str
    extra: list[dict[str, Any]] | dict[str, Any] | None = None


class Ready(msgspec.Struct, kw_only=True):
    status: str
    checks: dict[str, bool]
    timings: dict[str, float]  # check name -> milliseconds it took


class NotReady(msgspec.Struct, kw_only=True):
    """503 from `/ready`: `checks` names what does not answer."""

    status_code: int
    detail: str
    checks: dict[str, bool]
    timings: dict[str, float]  # check name -> milliseconds it took


def body_schema(tp: Any) -> dict[str, Any]:
    """msgspec's JSON schema of a request body type, references resolved: what the gateway accepts,
    exactly. Litestar's own schema of a struct leaves out that unknown fields are refused
    (`additionalProperties: false`) and writes integer bounds as floats."""
    schema = msgspec.json.schema(tp)
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(copy.deepcopy(defs[ref.removeprefix("#/$defs/")]))
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def accepts(tp: Any, rule: dict[str, Any] | None = None) -> type[Operation]:
    """The `operation_class` of a route whose JSON body is `tp`: its OpenAPI request body is
    `body_schema(tp)` (see there) instead of Litestar's rendering of the struct, with `rule` (a
    constraint between fields) added."""
    schema = {**body_schema(tp), **(rule or {})}
    try:
        msgspec.convert(None, tp)
        optional = True  # no body, or `null`, is one too
    except msgspec.ValidationError:
        optional = False

    class StrictBody(Operation):
        def to_schema(self) -> dict[str, Any]:
            out = super().to_schema()
            body = out.get("requestBody", {})
            for media in body.get("content", {}).values():
                media["schema"] = copy.deepcopy(schema)
            if body:
                body["required"] = not optional
            return out

    StrictBody.__name__ = StrictBody.__qualname__ = f"Accepts{getattr(tp, '__name__', 'Body')}"
    return StrictBody


class AnyBytes(Operation):
    """The `operation_class` of a route that answers bytes of any content type (`*/*`: an artifact
    is served with the type it was stored with): each such answer also lists, first, the type the
    gateway falls back to (`application/octet-stream`), which a generated client reads as bytes
    where it knows no `*/*`."""

    def to_schema(self) -> dict[str, Any]:
        out = super().to_schema()
        for response in out.get("responses", {}).values():
            content = response.get("content", {})
            if "*/*" in content:
                response["content"] = {"application/octet-stream": copy.deepcopy(content["*/*"]), **content}
        return out

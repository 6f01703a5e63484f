"""Run events: one tagged union, one struct per `event_type`.

The JSON of an event on the bus is exactly the frame a WebSocket client
receives (plus the version field `v`), so the gateway forwards the bytes it
stored without re-encoding them. New fields must have defaults; a field's type
never changes (msgspec schema evolution rules).
"""

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

PROTOCOL_VERSION = 1
# A run's event numbers: stored in INTEGER columns (32 bits on PostgreSQL), so a bigger one is
# refused when decoded instead of failing (or overflowing) where it is stored.
SEQ_MAX = 2**31 - 1
Seq = Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)]


class RunStats(msgspec.Struct, omit_defaults=True):
    """What a finished run reports for metrics; carried by every terminal event."""

    duration: float = 0.0
    steps: int = 0
    approval_wait: float | None = None
    tokens_prompt: int | None = None
    tokens_completion: int | None = None
    cost_usd: float | None = None
    agent: str | None = None
    time_to_plan: float | None = None  # seconds from analysis_start to the first plan_ready


class Event(msgspec.Struct, tag_field="event_type", kw_only=True):
    id: str
    seq: Seq
    timestamp: datetime
    task_id: str
    run_id: str
    message: str = ""
    v: int = PROTOCOL_VERSION


class Empty(msgspec.Struct):
    pass


class PlanData(msgspec.Struct):
    plan: dict[str, Any]
    version: int = 1


class ApprovalRequiredData(msgspec.Struct):
    plan: dict[str, Any]
    timeout_s: float
    version: int = 1  # the plan version a decision now applies to


class DecisionData(msgspec.Struct, omit_defaults=True):
    feedback: str | None = None
    stats: RunStats | None = None


class ProgressData(msgspec.Struct, omit_defaults=True):
    step: int
    total_steps: int
    progress_percent: float
    current_phase: str
    title: str | None = None
    # Streaming agents: the text produced so far in this phase or step (its tail, when long).
    partial: str | None = None


class RevisionData(msgspec.Struct, omit_defaults=True):
    version: int  # the plan version that was sent back
    round: int  # 1 for the first revision
    feedback: str | None = None


class ArtifactData(msgspec.Struct):
    name: str
    size: int
    content_type: str


class CompletionData(msgspec.Struct, omit_defaults=True):
    results: Any
    duration: float
    stats: RunStats | None = None


class FailureData(msgspec.Struct, omit_defaults=True):
    error: str
    stats: RunStats | None = None
    # Why, when the runner names it: "budget" (the run's usage passed its max_tokens or max_cost_usd),
    # with the usage it reached (prompt + completion tokens, and USD).
    reason: str | None = None
    tokens: int | None = None
    cost_usd: float | None = None


class CancelledData(msgspec.Struct, omit_defaults=True):
    reason: str
    stats: RunStats | None = None


class TimeoutData(msgspec.Struct, omit_defaults=True):
    phase: Literal["approval", "execution"]
    stats: RunStats | None = None


class AnalysisStart(Event, tag="analysis_start"):
    data: Empty = msgspec.field(default_factory=Empty)


class PlanReady(Event, tag="plan_ready"):
    data: PlanData


class ApprovalRequired(Event, tag="approval_required"):
    data: ApprovalRequiredData


class Approved(Event, tag="approved"):
    data: DecisionData = msgspec.field(default_factory=DecisionData)


class Rejected(Event, tag="rejected"):
    data: DecisionData = msgspec.field(default_factory=DecisionData)


class Progress(Event, tag="progress"):
    data: ProgressData


class RevisionRequested(Event, tag="revision_requested"):
    """The approver sent the plan back with feedback; the agent plans again (a new version follows)."""

    data: RevisionData


class ArtifactCreated(Event, tag="artifact"):
    data: ArtifactData


class Completion(Event, tag="completion"):
    data: CompletionData


class Failure(Event, tag="failure"):
    data: FailureData


class Cancelled(Event, tag="cancelled"):
    data: CancelledData


class Timeout(Event, tag="timeout"):
    data: TimeoutData


AnyEvent = (
    AnalysisStart
    | PlanReady
    | ApprovalRequired
    | Approved
    | Rejected
    | Progress
    | RevisionRequested
    | ArtifactCreated
    | Completion
    | Failure
    | Cancelled
    | Timeout
)

EVENT_CLASSES: tuple[type[Event], ...] = (
    AnalysisStart,
    PlanReady,
    ApprovalRequired,
    Approved,
    Rejected,
    Progress,
    RevisionRequested,
    ArtifactCreated,
    Completion,
    Failure,
    Cancelled,
    Timeout,
)
EVENT_TYPES: tuple[str, ...] = tuple(cls.__struct_config__.tag for cls in EVENT_CLASSES)  # type: ignore[misc]
TERMINAL_EVENT_TYPES: frozenset[str] = frozenset(
    {"completion", "failure", "rejected", "cancelled", "timeout"}
)


def stats_of(event: Event) -> RunStats | None:
    data = getattr(event, "data", None)
    return getattr(data, "stats", None)

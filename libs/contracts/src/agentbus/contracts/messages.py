"""Commands, control messages and request/reply payloads on the bus."""

from datetime import datetime
from typing import Any, Literal

import msgspec

from agentbus.contracts.events import PROTOCOL_VERSION, Seq

ApprovalTimeoutPolicy = Literal["timeout", "reject", "approve"]


def deadline_feedback(policy: str) -> str:
    """The feedback of a `rejected` or `approved` event that the approval deadline's policy decided
    (no one did): the same words whichever service applies it."""
    return f"no decision within the approval deadline (on_approval_timeout: {policy})"


class RunStart(msgspec.Struct, kw_only=True):
    """`run.start.<agent>`: everything a runner needs to execute a run, so it never reads the gateway's DB."""

    run_id: str
    task_id: str
    run_number: int
    task_name: str
    task_description: str | None = None
    task_config: dict[str, Any] = msgspec.field(default_factory=dict)
    agent: str = "scripted"
    agent_config: dict[str, Any] = msgspec.field(default_factory=dict)
    require_approval: bool = True
    approval_timeout_s: float = 300
    timeout_s: float = 3600
    max_rounds: int = 5
    created_at: datetime | None = None
    max_revision_rounds: int = 2  # how many times a rejected plan may be sent back for a new version
    # What the deadline of an unanswered approval does: end the run `timeout`, `reject` it, or
    # `approve` it (the run goes on, decided by no one).
    on_approval_timeout: ApprovalTimeoutPolicy = "timeout"
    max_tokens: int | None = None  # budget: prompt + completion tokens; None: no cap
    max_cost_usd: float | None = None  # budget in USD; None: no cap
    # W3C trace context of the request that started the run (tracing on): a runner that takes or
    # resumes it continues that trace.
    traceparent: str | None = None
    v: int = PROTOCOL_VERSION


ControlKind = Literal["approve", "reject", "cancel"]


class RunControl(msgspec.Struct, kw_only=True):
    """A decision for a run. Stored in KV first, then announced on `run.control.<run_id>`."""

    run_id: str
    kind: ControlKind
    feedback: str | None = None
    reason: str | None = None
    decided_at: datetime | None = None
    revise: bool = False  # a reject that asks the agent for a new plan version instead of ending the run
    plan_version: int | None = None  # the plan version decided on; None: whichever is waiting
    v: int = PROTOCOL_VERSION


WakeReason = Literal["decision", "cancel", "deadline"]


class RunWake(msgspec.Struct, kw_only=True):
    """`run.wake.<agent>`: a parked run has something to act on (a decision, a cancel, its deadline).

    Goes through the same work queue as `RunStart`, so any runner serving the kind takes it. It only
    names the run: the runner reads the run's stored record (`<run_id>.start`) and its checkpoint, and
    a wake for a run that is not parked is dropped.
    """

    run_id: str
    task_id: str
    reason: WakeReason
    v: int = PROTOCOL_VERSION


class RunnerHeartbeat(msgspec.Struct, kw_only=True):
    """`run.heartbeat`: a runner is alive and holds these runs (sent every few seconds)."""

    runner_id: str
    run_ids: list[str] = msgspec.field(default_factory=list)
    v: int = PROTOCOL_VERSION


class RunCheckpointHead(msgspec.Struct, kw_only=True):
    """The stable part of a runner's checkpoint (KV `<run_id>.state`).

    The runner's own checkpoint struct is a superset with defaults for every
    other field; the gateway's reaper reads `seq`/`phase` and writes a
    `finished` head to fence off a lost holder.
    """

    phase: str = "new"
    seq: Seq = 0
    runner_id: str = ""
    parked: bool = False  # waiting for a decision or its deadline, held by no runner
    v: int = PROTOCOL_VERSION


class ResourceDeleted(msgspec.Struct, kw_only=True):
    """`task.deleted` / `run.deleted`: owners of dependent data delete theirs."""

    task_id: str
    run_id: str | None = None
    v: int = PROTOCOL_VERSION


ERROR_HEADER = "Agentbus-Error"


class Ping(msgspec.Struct):
    v: int = PROTOCOL_VERSION


class Pong(msgspec.Struct, kw_only=True):
    service: str
    instance: str
    version: str
    agents: list[str] = msgspec.field(default_factory=list)
    active_runs: int = 0
    capacity: int = 0
    v: int = PROTOCOL_VERSION


class AgentDescriptor(msgspec.Struct, kw_only=True):
    """One agent kind as a runner serves it."""

    kind: str
    description: str = ""
    config_schema: dict[str, Any] | None = None  # JSON Schema of its agent_config
    supports_resume: bool = False
    max_concurrency: int | None = None  # this runner's limit for the kind; None: only the runner's
    active_runs: int = 0


class RunnerInfo(msgspec.Struct, kw_only=True):
    """`run.runners.info`: every runner answers a Ping on it (scatter-gather discovery)."""

    instance: str
    version: str
    agents: list[AgentDescriptor] = msgspec.field(default_factory=list)
    active_runs: int = 0
    capacity: int = 0
    v: int = PROTOCOL_VERSION


class ServiceError(msgspec.Struct):
    """A request/reply error; sent with the header `Agentbus-Error: 1`."""

    status_code: int
    detail: str


class MetricsQuery(msgspec.Struct, kw_only=True):
    task_id: str | None = None
    run_id: str | None = None
    name: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    skip: int = 0
    limit: int = 10
    v: int = PROTOCOL_VERSION


class MetricsGet(msgspec.Struct, kw_only=True):
    metric_id: str
    v: int = PROTOCOL_VERSION


class MetricsSummaryQuery(msgspec.Struct, kw_only=True):
    task_id: str | None = None
    run_id: str | None = None
    v: int = PROTOCOL_VERSION


class MetricOut(msgspec.Struct, kw_only=True):
    id: str
    task_id: str
    run_id: str | None
    name: str
    metric_type: Literal["timer", "counter", "gauge"]
    value: float
    unit: str | None
    labels: dict[str, str]
    timestamp: datetime


class MetricsPage(msgspec.Struct, kw_only=True):
    items: list[MetricOut]
    total: int
    skip: int
    limit: int


class SummaryStat(msgspec.Struct):
    """p50/p95: nearest rank (the value at rank ceil(p/100 * count) in ascending order)."""

    count: int
    min: float
    max: float
    avg: float
    last: float
    sum: float = 0.0
    p50: float = 0.0
    p95: float = 0.0


class MetricsSummary(msgspec.Struct, kw_only=True, omit_defaults=True):
    metric_count: int
    metrics: dict[str, SummaryStat]
    task_id: str | None = None
    run_id: str | None = None


class RunOutcomes(msgspec.Struct, kw_only=True):
    """Runs by terminal outcome, each run counted once; success_rate: completed / total (null: none)."""

    total: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    cancelled: int = 0
    timeout: int = 0
    success_rate: float | None = None


class MetricsReportQuery(msgspec.Struct, kw_only=True):
    """The overall summary (no agent) or one agent kind's, over [since, until]."""

    agent: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    v: int = PROTOCOL_VERSION


class MetricsReport(msgspec.Struct, kw_only=True):
    metric_count: int
    runs: RunOutcomes
    metrics: dict[str, SummaryStat]


SeriesBucket = Literal["1m", "5m", "1h", "1d"]


class MetricsSeriesQuery(msgspec.Struct, kw_only=True):
    name: str
    task_id: str | None = None
    agent: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    bucket: SeriesBucket = "1h"
    v: int = PROTOCOL_VERSION


class SeriesPoint(msgspec.Struct, kw_only=True):
    t: datetime  # the bucket's start (UTC)
    count: int
    sum: float
    min: float
    max: float
    avg: float
    p95: float


class MetricsSeries(msgspec.Struct, kw_only=True):
    name: str
    bucket: SeriesBucket
    points: list[SeriesPoint]


# A metric's name (POST /api/metrics); `(?!\n)`: Python's `$` also matches before a final newline.
METRIC_NAME_PATTERN = r"^[a-z][a-z0-9_.]{0,63}$(?!\n)"
METRIC_UNIT_MAX_LENGTH = 32
# The largest magnitude a metric value may have (seconds, tokens, dollars, a count: far above any
# real one). Sums and averages over any number of stored values then stay finite numbers; a value
# near the largest double would make a summary's sum infinite, which JSON cannot say.
METRIC_VALUE_MAX = 1e15


def metric_value_ok(value: float) -> bool:
    """A finite value within +-METRIC_VALUE_MAX."""
    return -METRIC_VALUE_MAX <= value <= METRIC_VALUE_MAX  # NaN fails both comparisons


class MetricCreate(msgspec.Struct, kw_only=True):
    """A metric recorded by hand (POST /api/metrics): the gateway fills task_id and agent from the run."""

    task_id: str
    run_id: str
    agent: str
    name: str
    value: float
    metric_type: Literal["timer", "counter", "gauge"] = "gauge"
    unit: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    v: int = PROTOCOL_VERSION

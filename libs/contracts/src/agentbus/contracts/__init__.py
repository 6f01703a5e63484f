"""Typed messages shared by every agentbus service: subjects, payloads, codecs.

Services never import each other; everything they exchange is defined here.
"""

from agentbus.contracts import subjects
from agentbus.contracts.codec import decode_event, encode
from agentbus.contracts.events import (
    EVENT_TYPES,
    TERMINAL_EVENT_TYPES,
    AnalysisStart,
    ApprovalRequired,
    Approved,
    ArtifactCreated,
    Cancelled,
    Completion,
    Event,
    Failure,
    PlanReady,
    Progress,
    Rejected,
    RunStats,
    Timeout,
)
from agentbus.contracts.messages import (
    ControlKind,
    MetricOut,
    MetricsGet,
    MetricsPage,
    MetricsQuery,
    MetricsSummary,
    MetricsSummaryQuery,
    Ping,
    Pong,
    ResourceDeleted,
    RunControl,
    RunStart,
    ServiceError,
)
from agentbus.contracts.status import (
    RUN_STATUSES,
    TERMINAL_RUN_STATUSES,
    RunStatus,
)

__all__ = [
    "EVENT_TYPES",
    "RUN_STATUSES",
    "TERMINAL_EVENT_TYPES",
    "TERMINAL_RUN_STATUSES",
    "AnalysisStart",
    "ApprovalRequired",
    "Approved",
    "ArtifactCreated",
    "Cancelled",
    "Completion",
    "ControlKind",
    "Event",
    "Failure",
    "MetricOut",
    "MetricsGet",
    "MetricsPage",
    "MetricsQuery",
    "MetricsSummary",
    "MetricsSummaryQuery",
    "Ping",
    "PlanReady",
    "Pong",
    "Progress",
    "Rejected",
    "ResourceDeleted",
    "RunControl",
    "RunStart",
    "RunStats",
    "RunStatus",
    "ServiceError",
    "Timeout",
    "decode_event",
    "encode",
    "subjects",
]

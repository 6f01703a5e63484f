"""Every NATS subject, stream, consumer and bucket the services share.

`docs/subjects.md` is checked against `SUBJECTS` by a unit test, so the table
there and this module cannot drift apart.
"""

import hashlib
from typing import NamedTuple

from agentbus.contracts.kinds import valid_agent_kind

# JetStream streams
RUN_COMMANDS_STREAM = "AGENTBUS_RUN_COMMANDS"  # work queue: run.start.<agent kind>, run.wake.<agent kind>
EVENTS_STREAM = "AGENTBUS_EVENTS"  # every run event: events.run.>
LIFECYCLE_STREAM = "AGENTBUS_LIFECYCLE"  # task.deleted / run.deleted

# Durable consumers
RUNNER_CONSUMER = "runners"  # runners-<agent kind>: shared by every runner serving the kind (pull)
GATEWAY_EVENTS_CONSUMER = "gateway-events"  # shared by every gateway copy (push, queue group)
METRICS_EVENTS_CONSUMER = "metrics-events"  # shared by every metrics copy (push, queue group)
METRICS_LIFECYCLE_CONSUMER = "metrics-lifecycle"

# Key-value buckets and object stores
RUN_STATE_BUCKET = "agentbus_run_state"  # runner checkpoints and stored decisions
ARTIFACTS_BUCKET = "agentbus_artifacts"  # artifact bytes, key "<run_id>/<name>"

# nats.micro services: `$SRV.PING|INFO|STATS.<name>` list their copies and count their endpoints' requests
RUNNER_SERVICE = "agentbus-runner"  # endpoints `ping` (RUN_PING) and `info` (RUN_INFO)

# Subjects
RUN_START_KIND_PREFIX = "run.start"  # run.start.<agent kind>: taken only by runners serving the kind
RUN_START_KINDS = "run.start.>"
RUN_WAKE_KIND_PREFIX = "run.wake"  # run.wake.<agent kind>: a parked run has a decision, cancel or deadline
RUN_WAKE_KINDS = "run.wake.>"
RUN_CONTROL_PREFIX = "run.control"  # run.control.<run_id>
RUN_CONTROL_ALL = "run.control.*"
RUN_PING = "run.runners.ping"  # one runner answers (queue group `runner`)
RUN_HEARTBEAT = "run.heartbeat"
RUN_INFO = "run.runners.info"  # scatter-gather: every runner answers with its agent kinds
RUN_DELETED = "run.deleted"
TASK_DELETED = "task.deleted"
METRICS_QUERY = "run.metrics.query"
METRICS_GET = "run.metrics.get"
METRICS_RUN_SUMMARY = "run.metrics.summary"
METRICS_TASK_SUMMARY = "task.metrics.summary"
METRICS_PING = "run.metrics.ping"
METRICS_REPORT = "run.metrics.report"  # the overall summary, or one agent kind's
METRICS_SERIES = "run.metrics.series"
METRICS_CREATE = "run.metrics.create"
EVENTS_RUN_PREFIX = "events.run"  # events.run.<task_id>.<run_id>.<event_type>
EVENTS_RUN_ALL = "events.run.>"
EVENTS_LIVE_PREFIX = "events.live"  # events.live.<task_id>.<run_id>, published after storage
EVENTS_LIVE_ALL = "events.live.>"
EVENTS_DEAD = "events.dead"  # payloads that did not decode, for inspection


def _checked_kind(kind: str) -> str:
    # The kind becomes subject tokens (dots allowed) and part of a consumer name (no dots).
    if not valid_agent_kind(kind):
        raise ValueError(f"{kind!r} is not a valid agent kind (see agentbus.contracts.kinds)")
    return kind


def run_start(kind: str) -> str:
    return f"{RUN_START_KIND_PREFIX}.{_checked_kind(kind)}"


def run_wake(kind: str) -> str:
    return f"{RUN_WAKE_KIND_PREFIX}.{_checked_kind(kind)}"


def kind_consumer(kind: str) -> str:
    """The durable consumer of `run.start.<kind>`, shared by every runner serving the kind."""
    if "." not in _checked_kind(kind):
        return f"{RUNNER_CONSUMER}-{kind}"
    digest = hashlib.sha1(kind.encode()).hexdigest()[:8]  # "a.b" and "a_b" must not share a name
    return f"{RUNNER_CONSUMER}-{kind.replace('.', '_')}-{digest}"


def run_control(run_id: str) -> str:
    return f"{RUN_CONTROL_PREFIX}.{run_id}"


def run_event(task_id: str, run_id: str, event_type: str) -> str:
    return f"{EVENTS_RUN_PREFIX}.{task_id}.{run_id}.{event_type}"


def live_event(task_id: str, run_id: str) -> str:
    return f"{EVENTS_LIVE_PREFIX}.{task_id}.{run_id}"


def event_msg_id(run_id: str, seq: int) -> str:
    """JetStream message id: a re-published event is deduplicated by the server."""
    return f"{run_id}:{seq}"


def state_key(run_id: str) -> str:
    return f"{run_id}.state"


def start_key(run_id: str) -> str:
    """The run as the gateway created it: a runner acts only on runs whose record is stored here."""
    return f"{run_id}.start"


def decision_key(run_id: str) -> str:
    return f"{run_id}.decision"


def cancel_key(run_id: str) -> str:
    return f"{run_id}.cancel"


class Subject(NamedTuple):
    subject: str
    kind: str  # "jetstream", "core", "request/reply"
    payload: str
    publisher: str
    consumers: str


SUBJECTS: tuple[Subject, ...] = (
    Subject(
        "run.start.<agent_kind>",
        "jetstream work queue",
        "RunStart",
        "gateway",
        "runners serving the kind (durable pull `runners-<agent_kind>`)",
    ),
    Subject(
        "run.wake.<agent_kind>",
        "jetstream work queue",
        "RunWake",
        "gateway (decisions, cancels), reaper (missed deadlines)",
        "runners serving the kind (same durable pull `runners-<agent_kind>`)",
    ),
    Subject("run.control.<run_id>", "core", "RunControl", "gateway", "runner holding the run"),
    Subject(
        RUN_PING,
        "request/reply, one runner answers (nats.micro `agentbus-runner`, endpoint `ping`, "
        "queue group `runner`)",
        "Ping -> Pong",
        "gateway (/ready), each runner at start",
        "any one runner",
    ),
    Subject(
        RUN_INFO,
        "request/reply, every runner answers (nats.micro `agentbus-runner`, endpoint `info`, "
        "a queue group per runner: `runner-<service id>`)",
        "Ping -> RunnerInfo",
        "gateway (agent registry)",
        "every runner",
    ),
    Subject(RUN_HEARTBEAT, "core", "RunnerHeartbeat", "every runner", "every gateway (reaper)"),
    Subject(RUN_DELETED, "jetstream", "ResourceDeleted", "gateway", "metrics"),
    Subject(TASK_DELETED, "jetstream", "ResourceDeleted", "gateway", "metrics"),
    Subject(METRICS_QUERY, "request/reply", "MetricsQuery -> MetricsPage", "gateway", "metrics"),
    Subject(METRICS_GET, "request/reply", "MetricsGet -> MetricOut", "gateway", "metrics"),
    Subject(
        METRICS_RUN_SUMMARY, "request/reply", "MetricsSummaryQuery -> MetricsSummary", "gateway", "metrics"
    ),
    Subject(
        METRICS_TASK_SUMMARY, "request/reply", "MetricsSummaryQuery -> MetricsSummary", "gateway", "metrics"
    ),
    Subject(METRICS_PING, "request/reply", "Ping -> Pong", "gateway (/ready)", "metrics"),
    Subject(METRICS_REPORT, "request/reply", "MetricsReportQuery -> MetricsReport", "gateway", "metrics"),
    Subject(METRICS_SERIES, "request/reply", "MetricsSeriesQuery -> MetricsSeries", "gateway", "metrics"),
    Subject(METRICS_CREATE, "request/reply", "MetricCreate -> MetricOut", "gateway", "metrics"),
    Subject(
        "events.run.<task_id>.<run_id>.<event_type>",
        "jetstream",
        "Event",
        "runner",
        "gateway (durable `gateway-events`), metrics (durable `metrics-events`)",
    ),
    Subject(
        "events.live.<task_id>.<run_id>", "core", "Event", "gateway, after storing", "every gateway copy"
    ),
    Subject(EVENTS_DEAD, "core", "the undecodable bytes", "any service", "operators"),
)

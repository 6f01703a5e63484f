"""Runner configuration. The only module that reads the environment (`Settings.from_env`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated

import msgspec

from agentbus.common.settings import (
    EnvSettings,
    LogFormat,
    LogLevel,
    NatsAccess,
    NatsReplicas,
    NatsUrl,
    default_instance,
    env,
)

# What an Authorization header can carry: visible ASCII, no spaces.
KEY_PATTERN = r"^[!-~]+$"


MiB = 1024 * 1024

PRICES_ALLOWED = 'a JSON object like {"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6}, "llama": [0, 0]}'
LIMITS_ALLOWED = "kind=limit pairs like openai=4,team=2, each limit an integer >= 1"
URLS_ALLOWED = "comma-separated http:// or https:// URLs"


def _prices(raw: str) -> dict[str, tuple[float, float]]:
    table = json.loads(raw)
    if not isinstance(table, dict):
        raise ValueError("not an object")
    out: dict[str, tuple[float, float]] = {}
    for model, price in table.items():
        try:
            pair = (price["prompt"], price["completion"]) if isinstance(price, dict) else tuple(price)
            prompt, completion = (float(x) for x in pair)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"price of {model}: {exc!r}") from None
        if prompt < 0 or completion < 0:
            raise ValueError(f"negative price for {model}")
        out[str(model)] = (prompt, completion)
    return out


def parse_prices(raw: str) -> dict[str, tuple[float, float]]:
    """`{"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6}, "llama*": [0, 0]}` (USD per 1M tokens)."""
    try:
        return _prices(raw)
    except ValueError as exc:
        raise ValueError(f"RUNNER_MODEL_PRICES must be {PRICES_ALLOWED}: {exc}") from None


def _limits(raw: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        kind, sep, value = item.partition("=")
        try:
            if not sep or not kind.strip():
                raise ValueError
            out[kind.strip()] = int(value)
        except ValueError:
            raise ValueError(f"{item!r} is not kind=limit") from None
    return out


def parse_limits(raw: str) -> dict[str, int]:
    """`openai=4,team=2` -> {"openai": 4, "team": 2}."""
    try:
        return _limits(raw)
    except ValueError as exc:
        raise ValueError(f"RUNNER_AGENT_CONCURRENCY must look like openai=4,team=2: {exc}") from None


def _kinds(raw: str) -> tuple[str, ...]:
    kinds = tuple(a.strip() for a in raw.split(",") if a.strip())
    if not kinds:
        raise ValueError("no kind named")
    return kinds


def _urls(raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    if not urls:
        raise ValueError("no URL named")
    return urls


class ModelDefaults(EnvSettings, frozen=True, kw_only=True):
    """What the `openai` agent (and agents built on its client) use when agent_config leaves it out."""

    base_url: Annotated[
        str,
        env(
            "OPENAI_BASE_URL",
            "model API (OpenAI-compatible) of the `openai` kind and of plug-ins built on its client",
            pattern=r"^https?://",
            allowed="an http:// or https:// URL",
        ),
    ] = "https://api.openai.com/v1"
    # Where else the runner's api_key may go (OPENAI_BASE_URL always may): a task naming any
    # other base_url must bring its own key, so the runner's cannot be sent to a server it names.
    allowed_base_urls: Annotated[
        tuple[Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s,]+$")], ...],
        env(
            "OPENAI_ALLOWED_BASE_URLS",
            "model APIs besides `OPENAI_BASE_URL` that `OPENAI_API_KEY` may be sent to; a task naming "
            "another base_url must bring its own api_key",
            parse=_urls,
            allowed=URLS_ALLOWED,
            default_doc="unset (`OPENAI_BASE_URL` only)",
        ),
    ] = ()
    # never in a repr, a log or an event
    api_key: (
        Annotated[
            str,
            env(
                "OPENAI_API_KEY",
                "API key sent to the model API",
                secret=True,
                pattern=KEY_PATTERN,
                allowed="printable ASCII without spaces",
            ),
        ]
        | None
    ) = None
    model: (
        Annotated[str, env("OPENAI_MODEL", "model used when agent_config names none", min_length=1)] | None
    ) = None
    # per request: connecting, and the longest silence while reading
    timeout_s: Annotated[
        float, env("OPENAI_TIMEOUT_S", "seconds per model request (connecting, longest silence)", gt=0)
    ] = 120.0
    # 429, 5xx, timeouts and connection errors
    max_retries: Annotated[
        int,
        env("OPENAI_MAX_RETRIES", "retries of a model request (429, 5xx, timeouts, connection errors)", ge=0),
    ] = 4
    # USD per million tokens: model name (or a prefix of it ending in "*") -> (prompt, completion).
    prices: Annotated[
        Mapping[str, tuple[Annotated[float, msgspec.Meta(ge=0)], Annotated[float, msgspec.Meta(ge=0)]]],
        env(
            "RUNNER_MODEL_PRICES",
            "USD per million tokens by model (a name ending in `*` is a prefix), for run costs",
            parse=_prices,
            allowed=PRICES_ALLOWED,
        ),
    ] = msgspec.field(default_factory=dict)

    def price(self, model: str) -> tuple[float, float] | None:
        if model in self.prices:
            return self.prices[model]
        prefixes = [p for p in self.prices if p.endswith("*") and model.startswith(p[:-1])]
        return self.prices[max(prefixes, key=len)] if prefixes else None


class Settings(EnvSettings, frozen=True, kw_only=True):
    nats_url: NatsUrl = "nats://127.0.0.1:4222"
    nats: NatsAccess = msgspec.field(default_factory=NatsAccess)
    runner_id: Annotated[
        str,
        env(
            "RUNNER_ID",
            "this runner's name, reported in pings and checkpoints",
            min_length=1,
            default_doc="`<hostname>-<pid>`",
        ),
    ] = msgspec.field(default_factory=default_instance)
    max_concurrency: Annotated[int, env("RUNNER_MAX_CONCURRENCY", "runs held at once", ge=1)] = 100
    ack_wait_s: Annotated[
        float,
        env(
            "RUNNER_ACK_WAIT_S",
            "seconds: a held run is heartbeated every third of it; a dead runner's runs come back after it",
            gt=0,
        ),
    ] = 30.0
    grace_s: Annotated[
        float,
        env(
            "RUNNER_GRACE_S",
            "seconds active runs get to finish on SIGTERM/SIGINT before they are handed back",
            ge=0,
        ),
    ] = 10.0
    replicas: NatsReplicas = 1
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "auto"
    # How long one pull request lingers at the server; bounds how long stopping takes to stop pulling.
    fetch_timeout_s: Annotated[
        float,
        env(
            "RUNNER_FETCH_TIMEOUT_S",
            "seconds one pull request lingers at the server; stopping waits for the last one",
            gt=0,
        ),
    ] = 5.0
    # How often the runner announces the runs it holds on `run.heartbeat` (the gateway's reaper
    # ends runs nobody has announced for a while).
    heartbeat_s: Annotated[
        float,
        env("RUNNER_HEARTBEAT_S", "seconds between announcements of held runs on `run.heartbeat`", gt=0),
    ] = 5.0
    # Agent kinds served (None: every registered kind), and per-kind limits of concurrent runs.
    agents: (
        Annotated[
            tuple[str, ...],
            env(
                "RUNNER_AGENTS",
                "the agent kinds to serve; unset: every installed kind",
                parse=_kinds,
                allowed="comma-separated agent kinds like openai,team",
                min_length=1,
            ),
        ]
        | None
    ) = None
    agent_concurrency: Annotated[
        Mapping[str, Annotated[int, msgspec.Meta(ge=1)]],
        env(
            "RUNNER_AGENT_CONCURRENCY",
            "per-kind limits of runs held at once",
            parse=_limits,
            allowed=LIMITS_ALLOWED,
        ),
    ] = msgspec.field(default_factory=dict)
    # Artifacts: the largest single file, and the total of one run's files.
    artifact_max_bytes: Annotated[
        int, env("RUNNER_ARTIFACT_MAX_BYTES", "largest artifact, bytes (64 MiB)", ge=1)
    ] = 64 * MiB
    run_artifacts_max_bytes: Annotated[
        int, env("RUNNER_RUN_ARTIFACTS_MAX_BYTES", "all of one run's artifacts, bytes (256 MiB)", ge=1)
    ] = 256 * MiB
    # Streaming agents: at most one `progress` event per this many seconds per run.
    progress_interval_s: Annotated[
        float,
        env(
            "RUNNER_PROGRESS_INTERVAL_S",
            "seconds: streamed text makes at most one `progress` event per interval per run; 0: no limit",
            ge=0,
        ),
    ] = 0.1
    # /metrics, /healthz, /readyz (docs/operations.md): off unless a port is given, so copies
    # started side by side (make run, the tests) do not fight for one port.
    metrics_port: Annotated[
        int,
        env(
            "RUNNER_METRICS_PORT",
            "port of the runner's `/metrics`, `/healthz` and `/readyz`; 0: not served",
            ge=0,
            le=65535,
        ),
    ] = 0
    metrics_host: Annotated[
        str, env("RUNNER_METRICS_HOST", "address `RUNNER_METRICS_PORT` listens on", min_length=1)
    ] = "127.0.0.1"
    model: ModelDefaults = msgspec.field(default_factory=ModelDefaults)

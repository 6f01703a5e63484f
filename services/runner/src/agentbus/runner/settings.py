"""Runner configuration. The only module that reads the environment."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field


def _default_runner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


MiB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ModelDefaults:
    """What the `openai` agent (and agents built on its client) use when agent_config leaves it out."""

    base_url: str = "https://api.openai.com/v1"
    api_key: str | None = field(default=None, repr=False)  # never in a repr, a log or an event
    model: str | None = None
    timeout_s: float = 120.0  # per request: connecting, and the longest silence while reading
    max_retries: int = 4  # 429, 5xx, timeouts and connection errors
    # USD per million tokens: model name (or a prefix of it ending in "*") -> (prompt, completion).
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def price(self, model: str) -> tuple[float, float] | None:
        if model in self.prices:
            return self.prices[model]
        prefixes = [p for p in self.prices if p.endswith("*") and model.startswith(p[:-1])]
        return self.prices[max(prefixes, key=len)] if prefixes else None


def parse_prices(raw: str) -> dict[str, tuple[float, float]]:
    """`{"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6}, "llama*": [0, 0]}` (USD per 1M tokens)."""
    try:
        table = json.loads(raw)
        if not isinstance(table, dict):
            raise ValueError("not an object")
        out: dict[str, tuple[float, float]] = {}
        for model, price in table.items():
            pair = (price["prompt"], price["completion"]) if isinstance(price, dict) else tuple(price)
            prompt, completion = (float(x) for x in pair)
            if prompt < 0 or completion < 0:
                raise ValueError(f"negative price for {model}")
            out[str(model)] = (prompt, completion)
        return out
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(
            "RUNNER_MODEL_PRICES must be a JSON object like "
            f'{{"gpt-4o-mini": {{"prompt": 0.15, "completion": 0.6}}}}: {exc}'
        ) from None


def parse_limits(raw: str) -> dict[str, int]:
    """`openai=4,team=2` -> {"openai": 4, "team": 2}."""
    out: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        kind, sep, value = item.partition("=")
        try:
            if not sep or not kind.strip():
                raise ValueError
            out[kind.strip()] = int(value)
        except ValueError:
            raise ValueError(
                f"RUNNER_AGENT_CONCURRENCY must look like openai=4,team=2; got {item!r}"
            ) from None
    return out


@dataclass(frozen=True, kw_only=True)
class Settings:
    nats_url: str = "nats://127.0.0.1:4222"
    runner_id: str = field(default_factory=_default_runner_id)
    max_concurrency: int = 100
    ack_wait_s: float = 30.0
    grace_s: float = 10.0
    replicas: int = 1
    log_level: str = "INFO"
    # How long one pull request lingers at the server; bounds how long stopping takes to stop pulling.
    fetch_timeout_s: float = 5.0
    # How often the runner announces the runs it holds on `run.heartbeat` (the gateway's reaper
    # ends runs nobody has announced for a while).
    heartbeat_s: float = 5.0
    # Agent kinds served (None: every registered kind), and per-kind limits of concurrent runs.
    agents: tuple[str, ...] | None = None
    agent_concurrency: Mapping[str, int] = field(default_factory=dict)
    # Artifacts: the largest single file, and the total of one run's files.
    artifact_max_bytes: int = 64 * MiB
    run_artifacts_max_bytes: int = 256 * MiB
    # Streaming agents: at most one `progress` event per this many seconds per run.
    progress_interval_s: float = 0.1
    model: ModelDefaults = field(default_factory=ModelDefaults)

    def __post_init__(self) -> None:
        if any(n < 1 for n in self.agent_concurrency.values()):
            raise ValueError("RUNNER_AGENT_CONCURRENCY limits must be >= 1")
        if self.artifact_max_bytes < 1 or self.run_artifacts_max_bytes < 1:
            raise ValueError("RUNNER_ARTIFACT_MAX_BYTES and RUNNER_RUN_ARTIFACTS_MAX_BYTES must be >= 1")
        if self.progress_interval_s < 0 or self.model.timeout_s <= 0 or self.model.max_retries < 0:
            raise ValueError(
                "RUNNER_PROGRESS_INTERVAL_S and OPENAI_MAX_RETRIES must be >= 0, OPENAI_TIMEOUT_S > 0"
            )
        if self.max_concurrency < 1:
            raise ValueError("RUNNER_MAX_CONCURRENCY must be >= 1")
        if self.ack_wait_s <= 0 or self.fetch_timeout_s <= 0 or self.heartbeat_s <= 0:
            raise ValueError("RUNNER_ACK_WAIT_S, RUNNER_FETCH_TIMEOUT_S and RUNNER_HEARTBEAT_S must be > 0")
        if self.grace_s < 0:
            raise ValueError("RUNNER_GRACE_S must be >= 0")
        if self.replicas < 1:
            raise ValueError("NATS_REPLICAS must be >= 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def num(name: str, default: float, kind: type = float):  # type: ignore[no-untyped-def]
            raw = env.get(name, "").strip()
            if not raw:
                return kind(default)
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{name} must be a {kind.__name__}, got {raw!r}") from None

        return cls(
            nats_url=env.get("NATS_URL") or cls.nats_url,
            runner_id=env.get("RUNNER_ID") or _default_runner_id(),
            max_concurrency=num("RUNNER_MAX_CONCURRENCY", 100, int),
            ack_wait_s=num("RUNNER_ACK_WAIT_S", 30),
            grace_s=num("RUNNER_GRACE_S", 10),
            replicas=num("NATS_REPLICAS", 1, int),
            log_level=env.get("LOG_LEVEL") or "INFO",
            fetch_timeout_s=num("RUNNER_FETCH_TIMEOUT_S", 5),
            heartbeat_s=num("RUNNER_HEARTBEAT_S", 5),
            agents=tuple(a.strip() for a in env["RUNNER_AGENTS"].split(",") if a.strip())
            if env.get("RUNNER_AGENTS", "").strip()
            else None,
            agent_concurrency=parse_limits(env.get("RUNNER_AGENT_CONCURRENCY", "")),
            artifact_max_bytes=num("RUNNER_ARTIFACT_MAX_BYTES", 64 * MiB, int),
            run_artifacts_max_bytes=num("RUNNER_RUN_ARTIFACTS_MAX_BYTES", 256 * MiB, int),
            progress_interval_s=num("RUNNER_PROGRESS_INTERVAL_S", 0.1),
            model=ModelDefaults(
                base_url=env.get("OPENAI_BASE_URL") or ModelDefaults.base_url,
                api_key=env.get("OPENAI_API_KEY") or None,
                model=env.get("OPENAI_MODEL") or None,
                timeout_s=num("OPENAI_TIMEOUT_S", 120),
                max_retries=num("OPENAI_MAX_RETRIES", 4, int),
                prices=parse_prices(env["RUNNER_MODEL_PRICES"]) if env.get("RUNNER_MODEL_PRICES") else {},
            ),
        )

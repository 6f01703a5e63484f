"""Runner configuration. The only module that reads the environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field


def _default_runner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


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

    def __post_init__(self) -> None:
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
        )

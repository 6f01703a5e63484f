"""Configuration, read from the environment in exactly one place."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from agentbus.common.db import redact


def default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    nats_url: str = "nats://127.0.0.1:4222"
    # repr=False: the URL may carry a password; log `database_url_redacted` instead.
    database_url: str = field(default="sqlite+aiosqlite:///./var/metrics.db", repr=False)
    nats_replicas: int = 1
    log_level: str = "INFO"
    instance: str = field(default_factory=default_instance)

    @property
    def database_url_redacted(self) -> str:
        return redact(self.database_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        replicas = env.get("NATS_REPLICAS", str(defaults.nats_replicas))
        try:
            nats_replicas = int(replicas)
        except ValueError:
            raise ValueError(f"NATS_REPLICAS must be an integer, got {replicas!r}") from None
        if nats_replicas < 1:
            raise ValueError(f"NATS_REPLICAS must be at least 1, got {nats_replicas}")
        return cls(
            nats_url=env.get("NATS_URL") or defaults.nats_url,
            database_url=env.get("METRICS_DATABASE_URL") or defaults.database_url,
            nats_replicas=nats_replicas,
            log_level=env.get("LOG_LEVEL") or defaults.log_level,
            instance=env.get("METRICS_INSTANCE") or defaults.instance,
        )

"""Configuration, read from the environment in exactly one place (`Settings.from_env`)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from agentbus.common.db import redact
from agentbus.common.settings import (
    DB_URL_ALLOWED,
    DB_URL_PATTERN,
    EnvSettings,
    LogFormat,
    LogLevel,
    NatsAccess,
    NatsReplicas,
    NatsUrl,
    default_instance,
    env,
)


class Settings(EnvSettings, frozen=True, kw_only=True):
    nats_url: NatsUrl = "nats://127.0.0.1:4222"
    nats: NatsAccess = msgspec.field(default_factory=NatsAccess)
    # secret: the URL may carry a password (a repr shows it masked); log `database_url_redacted`.
    database_url: Annotated[
        str,
        env(
            "METRICS_DATABASE_URL",
            "the metrics service's database; `postgresql://user:pass@host/db` uses asyncpg",
            secret=True,
            pattern=DB_URL_PATTERN,
            allowed=DB_URL_ALLOWED,
        ),
    ] = "sqlite+aiosqlite:///./var/metrics.db"
    nats_replicas: NatsReplicas = 1
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "auto"
    instance: Annotated[
        str,
        env(
            "METRICS_INSTANCE",
            "this copy's name (NATS connection name, pings)",
            min_length=1,
            default_doc="`<hostname>-<pid>`",
        ),
    ] = msgspec.field(default_factory=default_instance)
    db_pool_size: Annotated[
        int,
        env(
            "METRICS_DB_POOL_SIZE",
            "connections of its database pool on PostgreSQL",
            ge=1,
            le=100,
        ),
    ] = 10
    retention_days: Annotated[
        float,
        env(
            "METRICS_RETENTION_DAYS",
            "age after which raw metric rows are rolled up into hourly buckets and deleted (summaries "
            "and series of older ranges answer from the sketches and roll-ups); keep it above the "
            "events stream's 7 days; 0: raw rows are kept",
            ge=0,
        ),
    ] = 0
    upkeep_interval_s: Annotated[
        float,
        env(
            "METRICS_UPKEEP_INTERVAL_S",
            "how often closed hours' rows are counted into the sketches summaries and series read "
            "(and, with a retention age, old rows rolled up), in seconds",
            gt=0,
        ),
    ] = 60
    # /metrics, /healthz, /readyz (docs/operations.md): off unless a port is given, so copies
    # started side by side (make run, the tests) do not fight for one port.
    metrics_port: Annotated[
        int,
        env(
            "METRICS_METRICS_PORT",
            "port of the metrics service's `/metrics`, `/healthz` and `/readyz`; 0: not served",
            ge=0,
            le=65535,
        ),
    ] = 0
    metrics_host: Annotated[
        str, env("METRICS_METRICS_HOST", "address `METRICS_METRICS_PORT` listens on", min_length=1)
    ] = "127.0.0.1"

    @property
    def database_url_redacted(self) -> str:
        return redact(self.database_url)

"""Gateway configuration, read from the environment in exactly one place (`Settings.from_env`)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated

import msgspec

from agentbus.common.settings import (
    DB_URL_ALLOWED,
    DB_URL_PATTERN,
    EnvSettings,
    LogLevel,
    NatsAccess,
    NatsReplicas,
    NatsUrl,
    default_instance,
    env,
    load,
)

# What an Authorization header can carry: visible ASCII, no spaces.
TOKEN_PATTERN = r"^[!-~]+$"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_ORIGIN = re.compile(r"https?://[a-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?")
_HOST = re.compile(r"[a-z0-9.\-]+|[0-9a-f:.]+")


def _origins(raw: str) -> tuple[str, ...]:
    """`https://app.example:8443, http://localhost:5173` -> the origins, lowercased."""
    out = []
    for item in raw.split(","):
        origin = item.strip().lower().rstrip("/")
        if not origin:
            continue
        if origin == "*" or not _ORIGIN.fullmatch(origin):
            raise ValueError(f"{item.strip()!r} is not an origin like https://app.example:8443")
        out.append(origin)
    return tuple(out)


def _hosts(raw: str) -> tuple[str, ...]:
    """`agentbus.example, 10.0.0.5` -> the host names; `*` alone: any."""
    out = []
    for item in raw.split(","):
        host = item.strip().lower().strip("[]")
        if host == "*" or (host and _HOST.fullmatch(host)):
            out.append(host)
        elif host:
            raise ValueError(f"{item.strip()!r} is not a host name (no scheme, no port)")
    if "*" in out and len(out) > 1:
        raise ValueError("`*` (any host) stands alone")
    return tuple(out)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(EnvSettings, frozen=True, kw_only=True):
    nats_url: NatsUrl = "nats://127.0.0.1:4222"
    nats: NatsAccess = msgspec.field(default_factory=NatsAccess)
    database_url: Annotated[
        str,
        env(
            "DATABASE_URL",
            "the gateway's database; `postgresql://user:pass@host/db` uses asyncpg",
            secret=True,
            pattern=DB_URL_PATTERN,
            allowed=DB_URL_ALLOWED,
        ),
    ] = "sqlite+aiosqlite:///./var/gateway.db"
    host: Annotated[str, env("GATEWAY_HOST", "address the HTTP server listens on", min_length=1)] = (
        "127.0.0.1"
    )
    port: Annotated[int, env("GATEWAY_PORT", "port the HTTP server listens on", ge=1, le=65535)] = 8000
    api_token: (
        Annotated[
            str,
            env(
                "AGENTBUS_API_TOKEN",
                "required to listen beyond loopback; clients send `Authorization: Bearer <token>` "
                "(WebSockets may use `?token=`); `/health` and `/ready` stay open",
                secret=True,
                pattern=TOKEN_PATTERN,
                allowed="printable ASCII without spaces",
            ),
        ]
        | None
    ) = None
    cors_origins: Annotated[
        tuple[str, ...],
        env(
            "GATEWAY_CORS_ORIGINS",
            "web origins whose pages may use the gateway: they get CORS headers and may send writes "
            "and open streams; unset: none but the gateway's own pages",
            parse=_origins,
            allowed="comma-separated origins like https://app.example:8443",
        ),
    ] = ()
    allowed_hosts: (
        Annotated[
            tuple[str, ...],
            env(
                "GATEWAY_ALLOWED_HOSTS",
                "the host names a request's `Host` header may name (`*`: any); others get 400, "
                "which stops DNS rebinding",
                parse=_hosts,
                allowed="comma-separated host names without port, or *",
                default_doc="loopback names and GATEWAY_HOST; any when AGENTBUS_API_TOKEN is set",
            ),
        ]
        | None
    ) = None
    nats_replicas: NatsReplicas = 1
    max_body_bytes: Annotated[
        int, env("MAX_BODY_BYTES", "largest request body; larger bodies get 413", ge=1)
    ] = 1024 * 1024
    keepalive_s: Annotated[
        int,
        env(
            "GATEWAY_KEEPALIVE_S",
            "seconds an idle HTTP connection is kept open; above the idle timeouts of common client "
            "pools (httpx 5, aiohttp 15, Go 90), so a client never reuses one the moment it closes",
            ge=1,
        ),
    ] = 120
    ws_heartbeat_s: Annotated[
        float, env("WS_HEARTBEAT_S", "seconds between heartbeats on an idle stream", gt=0)
    ] = 10.0
    ws_queue_size: Annotated[
        int,
        env("WS_QUEUE_SIZE", "events queued for one stream client before it is dropped as too slow", ge=1),
    ] = 1000
    default_agent: Annotated[
        str, env("DEFAULT_AGENT", "agent kind of a task that names none", min_length=1)
    ] = "scripted"
    # The class default serves settings built in code; from_env uses <hostname>-<pid>.
    instance: Annotated[
        str,
        env(
            "GATEWAY_INSTANCE",
            "this copy's name (NATS connection name, reaper fences)",
            min_length=1,
            default_doc="`<hostname>-<pid>`",
        ),
    ] = "gateway"
    request_timeout_s: Annotated[
        float, env("GATEWAY_REQUEST_TIMEOUT_S", "seconds to wait for a NATS request's answer", gt=0)
    ] = 3.0
    delete_wait_s: Annotated[
        float,
        env(
            "GATEWAY_DELETE_WAIT_S",
            "seconds a delete waits for the runs it cancels to end; 0: do not wait",
            ge=0,
        ),
    ] = 5.0
    cancel_wait_s: Annotated[
        float,
        env(
            "GATEWAY_CANCEL_WAIT_S",
            "seconds a cancel waits for the run to end, to answer 409 if it ended otherwise",
            ge=0,
        ),
    ] = 2.0
    ingest_batch: Annotated[
        int, env("GATEWAY_INGEST_BATCH", "most events the ingest stores in one batch", ge=1)
    ] = 500
    reaper_after_s: Annotated[
        float,
        env("REAPER_AFTER_S", "end runs no runner has announced for this many seconds", gt=0),
    ] = 90.0
    reaper_interval_s: Annotated[
        float, env("REAPER_INTERVAL_S", "seconds between the reaper's rounds", gt=0)
    ] = 10.0
    db_pool_size: Annotated[
        int,
        env(
            "GATEWAY_DB_POOL_SIZE",
            "connections of the general database pool on PostgreSQL",
            ge=1,
            le=100,
        ),
    ] = 6
    db_read_connections: Annotated[
        int,
        env(
            "GATEWAY_DB_READ_CONNECTIONS",
            "PostgreSQL connections held for primary-key reads",
            ge=1,
            le=100,
        ),
    ] = 8
    log_level: LogLevel = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        return load(cls, env, defaults={"instance": default_instance()})

    def served_hosts(self) -> tuple[str, ...] | None:
        """The host names a request may name; None: any."""
        if self.allowed_hosts is not None:
            return None if self.allowed_hosts == ("*",) else self.allowed_hosts
        if self.api_token:
            return None  # a page cannot authenticate: rebinding reaches nothing
        own = () if self.host in ("0.0.0.0", "::") else (self.host.lower().strip("[]"),)
        return LOOPBACK_NAMES + own

    def check(self) -> None:
        """Refuse to listen beyond loopback without authentication."""
        if not is_loopback(self.host) and not self.api_token:
            raise SystemExit(
                f"refusing to listen on {self.host}: set AGENTBUS_API_TOKEN to listen beyond loopback"
            )

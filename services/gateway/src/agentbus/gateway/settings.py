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
    LogFormat,
    LogLevel,
    NatsAccess,
    NatsReplicas,
    NatsUrl,
    SettingsError,
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


JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512")


def _algorithms(raw: str) -> tuple[str, ...]:
    out = tuple(a.strip() for a in raw.split(",") if a.strip())
    unknown = [a for a in out if a not in JWT_ALGORITHMS]
    if not out or unknown:
        raise ValueError(f"unknown algorithm {unknown[0]!r}" if unknown else "no algorithm named")
    return out


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
    admin_token: (
        Annotated[
            str,
            env(
                "AGENTBUS_ADMIN_TOKEN",
                "the first admin credential; setting it turns authentication on (required to listen "
                "beyond loopback); clients send `Authorization: Bearer <token>` (streams may use "
                "`?token=`); admins create keys for everyone else (`POST /api/keys`)",
                secret=True,
                pattern=TOKEN_PATTERN,
                allowed="printable ASCII without spaces, at least 16 characters",
                min_length=16,
            ),
        ]
        | None
    ) = None
    api_token: (
        Annotated[
            str,
            env(
                "AGENTBUS_API_TOKEN",
                "the former name of AGENTBUS_ADMIN_TOKEN, still honoured (an admin credential)",
                secret=True,
                pattern=TOKEN_PATTERN,
                allowed="printable ASCII without spaces, at least 16 characters",
                min_length=16,
            ),
        ]
        | None
    ) = None
    jwt_key: (
        Annotated[
            str,
            env(
                "JWT_KEY",
                "verifies JWT bearer tokens: a PEM public key (RS*/ES*/EdDSA), or a shared secret for "
                "HS256; setting it turns authentication on",
                secret=True,
                min_length=1,
            ),
        ]
        | None
    ) = None
    jwt_jwks_url: (
        Annotated[
            str,
            env(
                "JWT_JWKS_URL",
                "verifies JWT bearer tokens against the keys published at this URL (their `kid`); "
                "setting it turns authentication on",
                pattern=r"^https?://\S+$",
                allowed="an http(s) URL",
            ),
        ]
        | None
    ) = None
    jwt_algorithms: Annotated[
        tuple[str, ...],
        env(
            "JWT_ALGORITHMS",
            "the signature algorithms a JWT may use",
            parse=_algorithms,
            allowed="comma-separated names among " + ", ".join(JWT_ALGORITHMS),
        ),
    ] = ("RS256", "ES256")
    jwt_issuer: (
        Annotated[
            str,
            env(
                "JWT_ISSUER",
                "the `iss` a JWT must carry; required with JWT_KEY or JWT_JWKS_URL",
                min_length=1,
            ),
        ]
        | None
    ) = None
    jwt_audience: (
        Annotated[
            str,
            env(
                "JWT_AUDIENCE",
                "the `aud` a JWT must carry (this gateway's name at the identity provider); required "
                "with JWT_KEY or JWT_JWKS_URL",
                min_length=1,
            ),
        ]
        | None
    ) = None
    jwt_role_claim: Annotated[
        str,
        env("JWT_ROLE_CLAIM", "the JWT claim naming the role (a string, or a list: the first role known)"),
    ] = "role"
    jwt_name_claim: Annotated[
        str, env("JWT_NAME_CLAIM", "the JWT claim shown as the identity's name (else `sub`)")
    ] = "name"
    allow_insecure: Annotated[
        bool,
        env(
            "ALLOW_INSECURE",
            "`1`: listen beyond loopback even with authentication off (anyone who reaches the port "
            "may do anything)",
        ),
    ] = False
    write_rate: Annotated[
        float,
        env("GATEWAY_WRITE_RATE", "writes per second each identity may send over time (then 429)", gt=0),
    ] = 50.0
    write_burst: Annotated[
        int, env("GATEWAY_WRITE_BURST", "writes an identity may send at once before the rate applies", ge=1)
    ] = 200
    max_streams: Annotated[
        int,
        env(
            "GATEWAY_MAX_STREAMS",
            "WebSocket and SSE streams one identity may hold open at once on this gateway (then 429)",
            ge=1,
        ),
    ] = 200
    denied_audit_per_minute: Annotated[
        int,
        env(
            "AUDIT_DENIED_PER_MINUTE",
            "`auth.denied` audit entries written per minute at most; the rest are counted in the next",
            ge=1,
        ),
    ] = 60
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
                default_doc="loopback names and GATEWAY_HOST; any when authentication is on",
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
    webhook_timeout_s: Annotated[
        float, env("WEBHOOK_TIMEOUT_S", "seconds a webhook delivery waits for the receiver's answer", gt=0)
    ] = 5.0
    webhook_max_attempts: Annotated[
        int,
        env("WEBHOOK_MAX_ATTEMPTS", "attempts of a webhook delivery before it is `failed`", ge=1, le=100),
    ] = 8
    webhook_backoff_s: Annotated[
        float,
        env(
            "WEBHOOK_BACKOFF_S",
            "seconds before a failed webhook delivery's second attempt; doubled after each failure",
            gt=0,
        ),
    ] = 1.0
    webhook_backoff_max_s: Annotated[
        float, env("WEBHOOK_BACKOFF_MAX_S", "longest wait between two attempts of a webhook delivery", gt=0)
    ] = 300.0
    webhook_keep_days: Annotated[
        float,
        env(
            "WEBHOOK_KEEP_DAYS",
            "days a delivered or failed webhook delivery is kept (`/api/webhooks/{id}/deliveries`)",
            gt=0,
        ),
    ] = 7.0
    webhook_poll_s: Annotated[
        float,
        env(
            "WEBHOOK_POLL_S",
            "seconds between looks for due webhook deliveries (new ones are sent at once by the copy "
            "that stored their event)",
            gt=0,
        ),
    ] = 1.0
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
    log_format: LogFormat = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        return load(cls, env, defaults={"instance": default_instance()})

    def served_hosts(self) -> tuple[str, ...] | None:
        """The host names a request may name; None: any."""
        if self.allowed_hosts is not None:
            return None if self.allowed_hosts == ("*",) else self.allowed_hosts
        if self.auth_on:
            return None  # a page cannot authenticate: rebinding reaches nothing
        own = () if self.host in ("0.0.0.0", "::") else (self.host.lower().strip("[]"),)
        return LOOPBACK_NAMES + own

    @property
    def admin_credential(self) -> str | None:
        """AGENTBUS_ADMIN_TOKEN, or its former name AGENTBUS_API_TOKEN."""
        return self.admin_token or self.api_token

    @property
    def auth_on(self) -> bool:
        return bool(self.admin_credential or self.jwt_key or self.jwt_jwks_url)

    @property
    def jwt_on(self) -> bool:
        return bool(self.jwt_key or self.jwt_jwks_url)

    def validate(self) -> None:
        """The safe defaults that span settings: without authentication the gateway listens on
        loopback only (unless ALLOW_INSECURE=1), and a JWT is accepted only from one issuer for
        one audience (a JWT any issuer signed for any service proves nothing about this one)."""
        if not is_loopback(self.host) and not self.auth_on and not self.allow_insecure:
            raise SettingsError(
                f"GATEWAY_HOST={self.host}: must be a loopback address (127.0.0.1, ::1, localhost) "
                "while authentication is off: set AGENTBUS_ADMIN_TOKEN (or JWT_KEY / JWT_JWKS_URL), "
                "or ALLOW_INSECURE=1 to let anyone who reaches the port do anything"
            )
        if self.jwt_on:
            source = "JWT_KEY" if self.jwt_key else "JWT_JWKS_URL"
            for name, value, what in (
                ("JWT_ISSUER", self.jwt_issuer, "the `iss` claim"),
                ("JWT_AUDIENCE", self.jwt_audience, "the `aud` claim"),
            ):
                if not value:
                    raise SettingsError(
                        f"{name} is unset: must be set when {source} is set ({what} every accepted "
                        "JWT must carry)"
                    )

    def auth_summary(self) -> str:
        """One line on who may use this gateway, as it starts: the log says it, `make run` prints it."""
        if self.auth_on:
            ways = []
            if self.admin_credential:
                ways.append("the admin token and API keys")
            if self.jwt_on:
                ways.append(f"JWTs from {self.jwt_issuer} for {self.jwt_audience}")
            return f"authentication is on: every request needs credentials ({', '.join(ways)})"
        if is_loopback(self.host):
            return (
                f"authentication is off: listening on loopback ({self.host}) only; anyone on this "
                "machine acts as the admin"
            )
        return (
            f"authentication is off and ALLOW_INSECURE=1: listening on {self.host}, where anyone who "
            "reaches the port may do anything"
        )

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "sqlite+aiosqlite:///./var/gateway.db"
    host: str = "127.0.0.1"
    port: int = 8000
    api_token: str | None = None
    nats_replicas: int = 1
    max_body_bytes: int = 1024 * 1024
    ws_heartbeat_s: float = 10.0
    ws_queue_size: int = 1000
    default_agent: str = "scripted"
    instance: str = "gateway"
    request_timeout_s: float = 3.0
    delete_wait_s: float = 5.0
    ingest_batch: int = 500
    reaper_after_s: float = 90.0
    reaper_interval_s: float = 10.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        return cls(
            nats_url=e.get("NATS_URL", cls.nats_url),
            database_url=e.get("DATABASE_URL", cls.database_url),
            host=e.get("GATEWAY_HOST", cls.host),
            port=int(e.get("GATEWAY_PORT", cls.port)),
            api_token=e.get("AGENTBUS_API_TOKEN") or None,
            nats_replicas=int(e.get("NATS_REPLICAS", cls.nats_replicas)),
            max_body_bytes=int(e.get("MAX_BODY_BYTES", cls.max_body_bytes)),
            ws_heartbeat_s=float(e.get("WS_HEARTBEAT_S", cls.ws_heartbeat_s)),
            ws_queue_size=int(e.get("WS_QUEUE_SIZE", cls.ws_queue_size)),
            default_agent=e.get("DEFAULT_AGENT", cls.default_agent),
            instance=e.get("GATEWAY_INSTANCE", f"{socket.gethostname()}-{os.getpid()}"),
            request_timeout_s=float(e.get("GATEWAY_REQUEST_TIMEOUT_S", cls.request_timeout_s)),
            reaper_after_s=float(e.get("REAPER_AFTER_S", cls.reaper_after_s)),
            reaper_interval_s=float(e.get("REAPER_INTERVAL_S", cls.reaper_interval_s)),
        )

    def check(self) -> None:
        """Refuse to listen beyond loopback without authentication."""
        if not is_loopback(self.host) and not self.api_token:
            raise SystemExit(
                f"refusing to listen on {self.host}: set AGENTBUS_API_TOKEN to listen beyond loopback"
            )

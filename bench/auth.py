"""The credentials every benchmark authenticates with, and the limits its gateways are started with.

The harness makes one random token per run (`python -m bench`) and starts every gateway with it as
`AGENTBUS_ADMIN_TOKEN` and under its former name `AGENTBUS_API_TOKEN` (older code, a `--compare`
ref, knows only that one). Once a system is up, the harness makes an admin API key on its gateway
with that token (`POST /api/keys`), and the benchmarks authenticate with the key: the path a user's
client takes. A gateway without keys (an older ref) is measured with the token.

Load processes get both in their environment: the token as `AGENTBUS_BENCH_TOKEN`, the keys as
`AGENTBUS_BENCH_KEYS` (JSON, gateway port -> key). Every request they send carries
`Authorization: Bearer <key of that gateway, else the token>`, the WebSocket and SSE handshakes
too. To run a load process by hand against a gateway with a token, set `AGENTBUS_BENCH_TOKEN` to it.

The per-identity limits are set far above what the benchmarks send, so that they measure what the
checks cost and never the throttling: the write rate and burst (else 429), and the streams one
identity may hold (above the largest fan-out, else 4429 / 429).
"""

from __future__ import annotations

import json
import os
import secrets
from urllib.parse import urlsplit

ENV = "AGENTBUS_BENCH_TOKEN"
KEYS_ENV = "AGENTBUS_BENCH_KEYS"
LIMITS = {
    "GATEWAY_WRITE_RATE": "1000000000",
    "GATEWAY_WRITE_BURST": "1000000000",
    "GATEWAY_MAX_STREAMS": "1000000",
}

_token: str | None = None
_keys: dict[str, str] = {}  # gateway port -> the admin API key made on it (this process's view)


def token() -> str:
    """This run's token: in a load process the one in its environment; in the harness, made once."""
    global _token
    if _token is None:
        _token = os.environ.get(ENV) or secrets.token_urlsafe(32)
    return _token


def use_key(port: int, key: str) -> None:
    """Authenticate with `key` on the gateway at `port` from now on (the harness and its loads)."""
    _keys[str(port)] = key


def _port(where: str | int) -> str:
    if isinstance(where, int):
        return str(where)
    parts = urlsplit(where if "//" in where else f"//{where}")
    return str(parts.port or (443 if parts.scheme in ("https", "wss") else 80))


def credential(where: str | int) -> str:
    """The credential for the gateway at `where` (a URL, `host:port` or a port): its key if the
    harness made one, else the token."""
    if not _keys and (given := os.environ.get(KEYS_ENV)):
        _keys.update(json.loads(given))
    return _keys.get(_port(where)) or token()


def bearer(where: str | int) -> dict[str, str]:
    """The header every request of the benchmarks to the gateway at `where` carries."""
    return {"Authorization": f"Bearer {credential(where)}"}


def gateway_env() -> dict[str, str]:
    """What every gateway the harness starts is given: the token under both names, and the limits."""
    return {"AGENTBUS_ADMIN_TOKEN": token(), "AGENTBUS_API_TOKEN": token(), **LIMITS}


def tool_env() -> dict[str, str]:
    """The environment of a load process: the harness's, and the token."""
    return {**os.environ, ENV: token(), KEYS_ENV: json.dumps(_keys)}


def refused(close_code: int | None) -> bool:
    """A WebSocket close code that refuses the client (4401 no credential, 4403 no role, 4429 too
    many streams, 4400/4404 a bad request): the 4xxx codes, never a measured outcome."""
    return close_code is not None and 4000 <= close_code < 5000

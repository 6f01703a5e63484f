"""The admin token every benchmark authenticates with, and the limits its gateways are started with.

The harness makes one random token per run (`python -m bench`), starts every gateway with it as
`AGENTBUS_ADMIN_TOKEN` and under its former name `AGENTBUS_API_TOKEN` (older code, a `--compare`
ref, knows only that one), and hands it to its load processes in their environment as
`AGENTBUS_BENCH_TOKEN`. Every request they send carries `Authorization: Bearer <token>`, the
WebSocket and SSE handshakes too. To run a load process by hand against a gateway with a token, set
`AGENTBUS_BENCH_TOKEN` to it.

The per-identity limits are set far above what the benchmarks send, so that they measure what the
checks cost and never the throttling: the write rate and burst (else 429), and the streams one
identity may hold (above the largest fan-out, else 4429 / 429).
"""

from __future__ import annotations

import os
import secrets

ENV = "AGENTBUS_BENCH_TOKEN"
LIMITS = {
    "GATEWAY_WRITE_RATE": "1000000000",
    "GATEWAY_WRITE_BURST": "1000000000",
    "GATEWAY_MAX_STREAMS": "1000000",
}

_token: str | None = None


def token() -> str:
    """This run's token: in a load process the one in its environment; in the harness, made once."""
    global _token
    if _token is None:
        _token = os.environ.get(ENV) or secrets.token_urlsafe(32)
    return _token


def bearer() -> dict[str, str]:
    """The header every request of the benchmarks carries."""
    return {"Authorization": f"Bearer {token()}"}


def gateway_env() -> dict[str, str]:
    """What every gateway the harness starts is given: the token under both names, and the limits."""
    return {"AGENTBUS_ADMIN_TOKEN": token(), "AGENTBUS_API_TOKEN": token(), **LIMITS}


def tool_env() -> dict[str, str]:
    """The environment of a load process: the harness's, and the token."""
    return {**os.environ, ENV: token()}


def refused(close_code: int | None) -> bool:
    """A WebSocket close code that refuses the client (4401 no credential, 4403 no role, 4429 too
    many streams, 4400/4404 a bad request): the 4xxx codes, never a measured outcome."""
    return close_code is not None and 4000 <= close_code < 5000

"""What the sync and async clients share: where the gateway is, how a call is encoded, how an
answer is decoded (or mapped to an exception)."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import msgspec

from agentbus.client.errors import AgentbusError, from_response

# The gateway's own default (GATEWAY_PORT 8000, loopback).
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def resolve_url(url: str | None) -> str:
    """`url`, else `AGENTBUS_URL`, else the default; only http(s) with a host is accepted."""
    chosen = (url or os.environ.get("AGENTBUS_URL") or DEFAULT_URL).strip().rstrip("/")
    try:
        parts = urlsplit(chosen)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise AgentbusError(f"not a gateway URL (http://host:port expected): {chosen!r}")
    return chosen


def resolve_token(token: str | None) -> str | None:
    """`token`, else `AGENTBUS_TOKEN`; it goes into a header, so only visible ASCII is accepted."""
    chosen = token if token is not None else os.environ.get("AGENTBUS_TOKEN")
    chosen = (chosen or "").strip()
    if not chosen:
        return None
    if not (chosen.isascii() and chosen.isprintable()) or " " in chosen:
        raise AgentbusError("the token has characters no API key or JWT has (visible ASCII only)")
    return chosen


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def ws_url(base_url: str) -> str:
    return "ws" + base_url.removeprefix("http")


def seg(value: str) -> str:
    """One path segment: an id is opaque, so `/`, `?`, `..` in it stay inside the segment."""
    if not isinstance(value, str) or not value:
        raise AgentbusError(f"not an id: {value!r}")
    return quote(value, safe="")


def query(**params: Any) -> dict[str, Any]:
    """Query parameters, those left None dropped, times as RFC 3339, booleans as JSON."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        out[key] = value
    return out


def body(**fields: Any) -> dict[str, Any]:
    """A JSON body of the fields that were given (None: not sent)."""
    return {k: v for k, v in fields.items() if v is not None}


def decode(response: httpx.Response, tp: Any, ok: tuple[int, ...] = ()) -> Any:
    """The answer as `tp` (None: nothing; bytes: the raw body), or the error it stands for."""
    if response.status_code >= 400 and response.status_code not in ok:
        raise from_response(response)
    if tp is None:
        return None
    if tp is bytes:
        return response.content
    decoder = _decoders.get(tp)
    if decoder is None:
        decoder = _decoders[tp] = msgspec.json.Decoder(tp)
    try:
        return decoder.decode(response.content)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise AgentbusError(f"the gateway's answer is not what the contract says: {exc}") from None


def encode_json(payload: Any) -> bytes:
    return msgspec.json.encode(payload)

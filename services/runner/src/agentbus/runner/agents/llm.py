"""A small client for OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM).

Streams tokens (server-sent events), retries 429/5xx/timeouts/connection errors
with exponential backoff and jitter (honouring `Retry-After`), bounds every
request with a timeout, and aborts the HTTP request at once when the calling
task is cancelled. The API key is sent in the Authorization header only: it is
never logged and is scrubbed from every error message.

What a server answers reaches an error, a log line or an event only as its
status code and the standard phrase for it (`answered HTTP 401 Unauthorized`):
never its body, headers or reason phrase, since a task may point the client at
a server it should not be able to read.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NamedTuple

import httpx
import msgspec

from agentbus.common import tracing
from agentbus.runner.agents.base import AgentError

log = logging.getLogger(__name__)
# httpx logs every request at INFO with its URL (query included) and the reason phrase the server
# sent, httpcore the server's headers at DEBUG: quiet unless configured otherwise.
for _name in ("httpx", "httpcore"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
TextCallback = Callable[[str], Awaitable[None]]
DEFAULT_PORTS = {"http": 80, "https": 443}
_json = msgspec.json.Decoder()
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class ModelError(AgentError):
    """The model server failed in a way retrying did not (or cannot) fix; the message says how."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    usage_reported: bool  # False: the server sent no usage and the counts are estimates


class BaseURL(NamedTuple):
    """A base URL as the HTTP client reads it: two that compare equal reach the same server the same way."""

    scheme: str
    host: str  # lowercase, IDNA-encoded
    port: int  # the scheme's default when the URL names none
    path: str  # without trailing slashes
    userinfo: str
    query: str
    fragment: str


def base_url_key(url: str) -> BaseURL | None:
    """`url` normalised by httpx's own parser (the one that sends the request); None when it is no
    http(s) URL with a host. `https://API.example.com:443/v1/` == `https://api.example.com/v1`."""
    try:
        u = httpx.URL(url)
        if u.scheme not in DEFAULT_PORTS or not u.raw_host:
            return None
        return BaseURL(
            u.scheme,
            u.raw_host.decode("ascii").lower(),
            u.port or DEFAULT_PORTS[u.scheme],
            u.path.rstrip("/"),
            u.userinfo.decode("ascii"),
            u.query.decode("ascii"),
            u.fragment,
        )
    except (httpx.InvalidURL, TypeError, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def same_base_url(url: str, other: str) -> bool:
    """Whether both name the same server and path: never by prefix, so `https://api.example.com.evil`,
    `https://api.example.com@evil` or another scheme or port is not `https://api.example.com`."""
    key = base_url_key(url)
    return key is not None and key == base_url_key(other)


def status_line(code: int) -> str:
    """`401 Unauthorized`: the code and its standard phrase, never the reason phrase the server sent."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def printable(text: str, limit: int = 120) -> str:
    """`text` on one line of printable ASCII, at most `limit` characters."""
    text = _UNPRINTABLE.sub("?", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unreachable_reason(exc: BaseException) -> str:
    """Why a connection failed, in the fixed words of the OS or OpenSSL (never text a server sent)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLError):
            return f"TLS {printable(cause.reason or 'error', 60)}"
        if isinstance(cause, socket.gaierror):
            return printable(str(cause.strerror or "name not resolved"), 60)
        if isinstance(cause, OSError) and isinstance(cause.errno, int) and cause.errno > 0:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    return ""


def retry_after_s(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, `Retry-After` (seconds or an HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_s(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: half fixed, half random, so retries of many runs spread out."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


class ChatClient:
    """One base URL and key; `complete()` is one chat completion with retries."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
        retry_after_max_s: float = 60.0,
        include_usage: bool = True,
        text_interval_s: float = 0.05,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.host = _host(base_url)
        self._key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.include_usage = include_usage
        self.text_interval_s = text_interval_s  # on_text gets the text so far at most this often
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)), trust_env=True
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def scrub(self, text: str) -> str:
        """`text` without the API key (some servers echo it in errors)."""
        if self._key and len(self._key) >= 4:
            text = text.replace(self._key, "***")
        return text

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str,
        response_format: dict[str, Any] | None = None,
        stream: bool = True,
        on_text: TextCallback | None = None,
        **params: Any,
    ) -> Completion:
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        body.update({k: v for k, v in params.items() if v is not None})
        if response_format is not None:
            body["response_format"] = response_format
        if stream and self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if not tracing.enabled():
            return await self._retrying(body, on_text)
        attributes = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model}
        with tracing.span(f"chat {model}", kind="client", attributes=attributes):
            return await self._retrying(body, on_text)

    async def _retrying(self, body: dict[str, Any], on_text: TextCallback | None) -> Completion:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._once(body, on_text)
            except _Retryable as exc:
                if attempt > self.max_retries:
                    tries = "1 attempt" if attempt == 1 else f"{attempt} attempts"
                    raise ModelError(f"{self.scrub(str(exc))} (gave up after {tries})") from None
                if exc.retry_after is not None:
                    delay = min(exc.retry_after, self.retry_after_max_s)
                else:
                    delay = backoff_s(attempt, self.backoff_base_s, self.backoff_max_s)
                log.warning(
                    "%s; retry %d/%d in %.2fs",
                    self.scrub(str(exc)),
                    attempt,
                    self.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _once(self, body: dict[str, Any], on_text: TextCallback | None) -> Completion:
        headers = {"Accept": "text/event-stream" if body["stream"] else "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            # Leaving this block in any way (a cancel included) closes the response, and with it
            # the connection when the body was not read to the end: the server sees it at once.
            async with self._http.stream("POST", self.url, json=body, headers=headers) as resp:
                if resp.status_code != 200:
                    # The status only: the body (and the reason phrase) may be another service's data.
                    message = f"model server {self.host} answered HTTP {status_line(resp.status_code)}"
                    if resp.status_code in RETRY_STATUSES:
                        raise _Retryable(message, retry_after_s(resp.headers))
                    raise ModelError(self.scrub(message))
                if "text/event-stream" in resp.headers.get("content-type", ""):
                    return await _read_stream(resp, body["messages"], on_text, self.text_interval_s)
                return _read_json(await resp.aread(), body["messages"])
        except httpx.TimeoutException as exc:
            kind = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for an answer"
            raise _Retryable(f"model server {self.host} timed out {kind} ({self.timeout_s:g}s)") from None
        except httpx.TransportError as exc:
            # Not str(exc): a protocol error quotes the bytes the server sent.
            reason = unreachable_reason(exc)
            what = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
            raise _Retryable(f"model server {self.host} unreachable: {what}") from None
        except httpx.HTTPError as exc:  # an undecodable body (DecodingError) and the like
            raise ModelError(
                f"model server {self.host} sent an unreadable answer ({type(exc).__name__})"
            ) from None


def _host(base_url: str) -> str:
    """`host:port` of a base URL for messages: no user info, path or query."""
    try:
        netloc = httpx.URL(base_url).netloc.decode("ascii")
    except (httpx.InvalidURL, TypeError, ValueError, UnicodeDecodeError):
        netloc = ""
    return printable(netloc or "(invalid URL)", 100)


def _prompt_chars(messages: list[dict[str, Any]]) -> str:
    return "".join(str(m.get("content") or "") for m in messages)


def _usage(doc: dict[str, Any]) -> tuple[int, int] | None:
    usage = doc.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        completion = usage.get("completion_tokens")
        return usage["prompt_tokens"], completion if isinstance(completion, int) else 0
    return None


def _completion(text: str, usage: tuple[int, int] | None, messages: list[Any]) -> Completion:
    if usage is None:
        return Completion(text, estimate_tokens(_prompt_chars(messages)), estimate_tokens(text), False)
    return Completion(text, usage[0], usage[1], True)


def _read_json(raw: bytes, messages: list[dict[str, Any]]) -> Completion:
    try:
        doc = _json.decode(raw)
        choice = doc["choices"][0]
        text = choice["message"].get("content") or ""
    except (msgspec.DecodeError, KeyError, IndexError, TypeError, AttributeError):
        text = None
    if not isinstance(text, str):  # what it sent is not quoted: it may be another service's data
        raise ModelError("model server sent an unreadable completion (not a chat completion)")
    return _completion(text, _usage(doc), messages)


async def _read_stream(
    resp: httpx.Response, messages: list[dict[str, Any]], on_text: TextCallback | None, interval: float
) -> Completion:
    parts: list[str] = []
    usage: tuple[int, int] | None = None
    last = 0.0
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments (": keep-alive"), event names
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            doc = _json.decode(data)
        except msgspec.DecodeError:
            raise ModelError("model server sent an unreadable stream chunk (not JSON)") from None
        if not isinstance(doc, dict):
            continue
        if "error" in doc:
            raise ModelError("model server reported an error while streaming")
        usage = _usage(doc) or usage
        choices = doc.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and isinstance(delta.get("content"), str) and delta["content"]:
                parts.append(delta["content"])
                # Joining on every token would be quadratic: hand out the text at most every interval.
                if on_text is not None and time.monotonic() - last >= interval:
                    last = time.monotonic()
                    await on_text("".join(parts))
    text = "".join(parts)
    if on_text is not None and text:
        await on_text(text)  # the whole text, whatever the interval dropped
    return _completion(text, usage, messages)

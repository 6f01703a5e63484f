"""What can go wrong talking to a gateway, as exceptions carrying the answer's `status_code` and
`detail` (every 4xx/5xx of the gateway is JSON with both)."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec


class AgentbusError(Exception):
    """Anything this client raises."""


class ConnectionFailed(AgentbusError):
    """The gateway could not be reached (or the connection broke) at all."""


class ApiError(AgentbusError):
    """The gateway answered with an error status."""

    def __init__(self, status_code: int, detail: str, body: Any = None) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.body = body


class BadRequest(ApiError):
    """400/422: the input was refused; `body["extra"]` names what was wrong, when the gateway says."""


class Unauthorized(ApiError):
    """401 (WebSocket close 4401): no credential, or one the gateway does not know."""


class Forbidden(ApiError):
    """403 (WebSocket close 4403): the identity's role may not do this."""


class NotFound(ApiError):
    """404 (WebSocket close 4404)."""


class Conflict(ApiError):
    """409: e.g. approving a run that is not awaiting approval, cancelling one that has ended."""


class PayloadTooLarge(ApiError):
    """413."""


class RateLimited(ApiError):
    """429: `retry_after` seconds (from `Retry-After`) when the gateway said."""

    retry_after: float | None = None


class ServerError(ApiError):
    """5xx (503: something the gateway needs does not answer)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: BadRequest,
    429: RateLimited,
}


def error_for(status_code: int, detail: str, body: Any = None) -> ApiError:
    cls = _BY_STATUS.get(status_code) or (ServerError if status_code >= 500 else ApiError)
    return cls(status_code, detail, body)


def from_response(response: httpx.Response) -> ApiError:
    body: Any = None
    detail = response.reason_phrase or "error"
    try:
        body = msgspec.json.decode(response.content)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        text = response.text.strip()
        detail = text[:500] if text else detail
    else:
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            detail = body["detail"]
    error = error_for(response.status_code, detail, body)
    if isinstance(error, RateLimited):
        try:
            error.retry_after = float(response.headers.get("retry-after", ""))
        except ValueError:
            error.retry_after = None
    return error


# WebSocket close codes the gateway uses for a refused stream, as the HTTP status they stand for.
CLOSE_STATUS = {4400: 400, 4401: 401, 4403: 403, 4404: 404, 4429: 429}

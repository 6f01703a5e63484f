"""Error types and handlers: every error is JSON with `status_code` and `detail`, never a bare 500."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from nats.errors import ConnectionClosedError, NoServersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError as JetStreamAPIError
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

log = logging.getLogger(__name__)


class GatewayRequest(Request):  # type: ignore[type-arg]
    """Litestar's request, with a body that is not JSON it can decode answered as the client's
    mistake (400) whatever the decoder raised: text that is not UTF-8, or nesting deeper than the
    decoder recurses. A body is also held to its route's type strictly: Litestar converts leniently
    (`0` for false, `"5"` for 5), and a client that sends the wrong type should hear so."""

    async def json(self) -> Any:
        try:
            value = await super().json()
        except UnicodeDecodeError:
            raise ValidationException("the body is not valid JSON: it is not UTF-8") from None
        except RecursionError:
            raise ValidationException("the body is not valid JSON: it is nested too deep") from None
        field = self.route_handler.parsed_data_field
        if field is not None:
            try:
                msgspec.convert(value, field.annotation, strict=True)
            except msgspec.ValidationError as exc:
                raise body_error(str(exc)) from None
        return value


_AT = re.compile(r"^(.*) - at `\$\.?([^`]*)`$", re.DOTALL)


def body_error(text: str) -> ValidationException:
    """msgspec's `Expected ... - at `$.field...`` as Litestar words its own: the field named in
    `extra` (`message`, `key`, `source`)."""
    match = _AT.match(text)
    message, path = (match.group(1), match.group(2)) if match else (text, "")
    key = re.split(r"[.\[]", path, maxsplit=1)[0]
    return ValidationException(
        f"invalid body: {text}", extra=[{"message": message, "key": key, "source": "body"}]
    )


class PayloadTooLarge(HTTPException):
    status_code = 413


class ServiceUnavailable(HTTPException):
    status_code = 503


class UpstreamError(HTTPException):
    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail=detail, status_code=status_code)


class Conflict(HTTPException):
    status_code = 409


def _json(status: int, detail: str) -> Response:
    return Response({"status_code": status, "detail": detail}, status_code=status)


def database_unavailable(_: Request, exc: Exception) -> Response:
    # Never echo the driver's message: it can carry host names or credentials.
    log.warning("database unavailable: %s", type(exc).__name__)
    return _json(503, "database unavailable; retry later")


def broker_unavailable(_: Request, exc: Exception) -> Response:
    log.warning("message broker unavailable: %s", type(exc).__name__)
    return _json(503, "message broker unavailable; retry later")


def integrity_conflict(_: Request, exc: Exception) -> Response:
    return _json(409, "conflicts with the stored state; retry")


def unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        if exc.extra:  # what was wrong, field by field (Litestar's validation: message, key, source)
            return Response(
                {"status_code": exc.status_code, "detail": str(exc.detail), "extra": exc.extra},
                status_code=exc.status_code,
            )
        return _json(exc.status_code, str(exc.detail))
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _json(500, "internal error")


EXCEPTION_HANDLERS = {
    IntegrityError: integrity_conflict,
    OperationalError: database_unavailable,
    DBAPIError: database_unavailable,
    PoolTimeoutError: database_unavailable,
    ConnectionRefusedError: database_unavailable,
    ConnectionClosedError: broker_unavailable,
    NoServersError: broker_unavailable,
    OutboundBufferLimitError: broker_unavailable,
    NatsTimeoutError: broker_unavailable,
    JetStreamAPIError: broker_unavailable,
}

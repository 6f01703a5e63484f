"""Error types and handlers: every error is JSON with `status_code` and `detail`, never a bare 500."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPI, OpenAPIHeader, OpenAPIType, Reference, Schema
from nats.errors import ConnectionClosedError, NoServersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError as JetStreamAPIError
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from agentbus.common.db import is_poison
from agentbus.gateway.schemas import Error

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


# What each error status means, for the OpenAPI document (`documented`).
WHY = {
    400: "invalid parameters or body (`extra` names each field that is wrong and why); or a `Host` "
    "this gateway does not serve (GATEWAY_ALLOWED_HOSTS lists those it does)",
    401: "no credentials, or ones the gateway does not accept (unknown, revoked or expired)",
    403: "the identity's role may not do this (or, for decisions, the task's approvers rule); or a "
    "write or stream from a web page of a foreign origin (GATEWAY_CORS_ORIGINS lists the allowed)",
    404: "not found",
    409: "conflicts with the current state",
    413: "the body is larger than the limit (MAX_BODY_BYTES, 1 MiB by default)",
    415: "a body not sent as `content-type: application/json`",
    416: "the range is outside the artifact",
    429: "too many writes from this identity (GATEWAY_WRITE_RATE); `Retry-After` says when to retry",
    502: "the service behind the gateway sent an answer it cannot read",
    503: "a service it needs (database, message broker, runner, metrics) is unavailable; retry later",
}
# A write (checked before routing: guard.py), and a write with a JSON body (also held to the limit).
WRITE = (403, 429, 503)
BODY = (403, 413, 415, 429, 503)


def documented(
    *codes: int, why: dict[int, str] | None = None, guarded: bool = True
) -> dict[int, ResponseSpec]:
    """The `responses=` of a route: each error status it can answer, as the gateway's JSON error.
    Every route answers 400 (the Host check of `guard.py` comes before routing): declared here, it
    also takes the place of the 400 Litestar documents for a route with parameters or a body, whose
    schema of its own (`extra` an array without `items`) a generated client cannot read. A guarded
    route (all but the open ones) also answers 401 and 403 (`access.py`)."""
    texts = {**WHY, **(why or {})}
    return {
        code: ResponseSpec(Error, description=texts[code], generate_examples=False)
        for code in sorted({400, *codes} | ({401, 403} if guarded else set()))
    }


# The headers an error status always comes with (access.py), declared on each response of that status.
ERROR_HEADERS = {
    401: (
        "WWW-Authenticate",
        OpenAPIHeader(
            schema=Schema(type=OpenAPIType.STRING, const="Bearer"),
            description="`Bearer`: send an API key, the admin token or a JWT as `Authorization: Bearer ...`",
            required=True,
        ),
    ),
    429: (
        "Retry-After",
        OpenAPIHeader(
            schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
            description="seconds to wait before trying again",
            required=True,
        ),
    ),
}
_OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def declare_error_headers(document: OpenAPI) -> None:
    """Declare `WWW-Authenticate` on every 401 response of the document and `Retry-After` on every
    429 (`ResponseSpec`, which `documented` makes, has no place for headers)."""
    for item in (document.paths or {}).values():
        for method in _OPERATIONS:
            operation = getattr(item, method, None)
            for status, (name, header) in ERROR_HEADERS.items():
                response = (operation.responses or {}).get(str(status)) if operation else None
                if response is not None and not isinstance(response, Reference):
                    response.headers = {**(response.headers or {}), name: header}


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
    if is_poison(exc):  # the input itself cannot be stored (a NUL in PostgreSQL text): no retry helps
        log.info("input the database cannot store: %s", type(exc).__name__)
        return _json(400, "invalid input: a value the database cannot store (a NUL character, say)")
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
        response = _json(exc.status_code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response
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

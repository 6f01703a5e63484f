"""Query parameters shared by routes: one definition each, one meaning each."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException
from litestar.params import Parameter

from agentbus.gateway.store import BadCursor

# The largest integer the databases store (a bigger one is a 400, not an overflow in the driver).
BIG = 2**63 - 1
# Litestar writes bounds as floats (2**63 - 1 becomes 2.0**63, one past it) and drops a bound of 0 on
# an optional number: the OpenAPI document gets them exactly from `schema_extra`.
_SKIP = {"minimum": 0, "maximum": BIG}

Skip = Annotated[int, Parameter(ge=0, le=BIG, description="items to skip", schema_extra=_SKIP)]
Limit = Annotated[
    int,
    Parameter(
        ge=1, le=100, description="page size, at most 100", schema_extra={"minimum": 1, "maximum": 100}
    ),
]
Cursor = Annotated[
    str | None,
    Parameter(
        min_length=1,
        max_length=200,
        description="a page's `next_cursor`: the page after it (instead of `skip`)",
    ),
]
# An id or name to filter a list by (ids are at most 64 characters).
Filter = Annotated[str | None, Parameter(max_length=200)]
LogLimit = Annotated[
    int, Parameter(ge=1, le=1000, description="at most 1000", schema_extra={"minimum": 1, "maximum": 1000})
]
# A run's log: events with seq > since (0: from the first).
LogSince = Annotated[
    int, Parameter(ge=0, le=BIG, description="return events with seq > since", schema_extra=_SKIP)
]
# Server-Sent Events: start after this seq (a `Last-Event-ID` header wins).
SseSince = Annotated[
    int | None,
    Parameter(ge=0, le=BIG, description="start after this seq (Last-Event-ID wins)", schema_extra=_SKIP),
]

# A point in time, as RFC 3339 text (`2026-12-06T10:00:00Z`): a number is not one, though Litestar
# would read it as a Unix time.
Instant = Annotated[
    str | None,
    Parameter(
        max_length=64,
        description="an RFC 3339 time like 2026-12-06T10:00:00Z",
        schema_extra={"format": "date-time"},
    ),
]
_WHOLE = re.compile(r"-?[0-9]+")


def instant(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return msgspec.convert(text, datetime)
    except msgspec.ValidationError:
        raise ValidationException(f"`{name}` must be an RFC 3339 time like 2026-12-06T10:00:00Z") from None


def checked_cursor(cursor: str | None, skip: int) -> str | None:
    if cursor is not None and skip:
        raise ValidationException("pass either `skip` or `cursor`, not both")
    return cursor


@contextlib.contextmanager
def page_input() -> Iterator[None]:
    """A cursor the store cannot read is the client's mistake: 400."""
    try:
        yield
    except BadCursor as exc:
        raise ValidationException(str(exc)) from None


@functools.cache
def _integer_query(handler: Any) -> tuple[str, ...]:
    """The query parameters of a route handler that are integers."""
    path = {m.group(1) for route in handler.paths for m in re.finditer(r"\{(\w+):", route)}
    out = []
    for name, field in handler.parsed_fn_signature.parameters.items():
        types = field.inner_types if field.is_optional else (field,)
        if name not in path and any(t.annotation is int for t in types):
            out.append(name)
    return tuple(out)


async def whole_numbers(request: Request) -> None:  # type: ignore[type-arg]
    """`before_request` of routes with integer query parameters: each must be a whole number in
    decimal digits. Litestar would read `1e3` as 1000 and `5.0` as 5; a client that sends them
    should hear that they are not integers, as it does for a body."""
    for name in _integer_query(request.route_handler):
        for value in request.query_params.getall(name, []):
            if not _WHOLE.fullmatch(value):
                raise ValidationException(
                    f"`{name}` must be a whole number in decimal digits",
                    extra=[{"message": "Expected a whole number", "key": name, "source": "query"}],
                )

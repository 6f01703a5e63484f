"""Query parameters shared by routes: one definition each, one meaning each."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

import msgspec
from litestar.exceptions import ValidationException
from litestar.params import Parameter

from agentbus.gateway.store import BadCursor

# The largest integer the databases store (a bigger one is a 400, not an overflow in the driver).
BIG = 2**63 - 1

Skip = Annotated[int, Parameter(ge=0, le=BIG, description="items to skip")]
Limit = Annotated[int, Parameter(ge=1, le=100, description="page size, at most 100")]
Cursor = Annotated[
    str | None,
    Parameter(
        min_length=1,
        max_length=200,
        description="a page's `next_cursor`: the page after it (instead of `skip`)",
    ),
]
LogLimit = Annotated[int, Parameter(ge=1, le=1000, description="at most 1000")]
# A run's log: events with seq > since (0: from the first).
LogSince = Annotated[int, Parameter(ge=0, le=BIG, description="return events with seq > since")]
# Server-Sent Events: start after this seq (a `Last-Event-ID` header wins).
SseSince = Annotated[
    int | None, Parameter(ge=0, le=BIG, description="start after this seq (Last-Event-ID wins)")
]

# A point in time, as RFC 3339 text (`2026-12-06T10:00:00Z`): a number is not one, though Litestar
# would read it as a Unix time.
Instant = Annotated[
    str | None,
    Parameter(max_length=64, description="an RFC 3339 time like 2026-12-06T10:00:00Z"),
]


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

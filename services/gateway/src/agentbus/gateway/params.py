"""Query parameters shared by routes: one definition each, one meaning each."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

Skip = Annotated[int, Parameter(ge=0, description="items to skip")]
Limit = Annotated[int, Parameter(ge=1, le=100, description="page size, at most 100")]
LogLimit = Annotated[int, Parameter(ge=1, le=1000, description="at most 1000")]
# A run's log: events with seq > since (0: from the first).
LogSince = Annotated[int, Parameter(ge=0, description="return events with seq > since")]
# A stream: replay the stored events with seq > since first (absent: live only).
StreamSince = Annotated[
    int | None, Parameter(ge=0, description="replay stored events with seq > since first")
]
# Server-Sent Events: start after this seq (a `Last-Event-ID` header wins).
SseSince = Annotated[int | None, Parameter(ge=0, description="start after this seq (Last-Event-ID wins)")]

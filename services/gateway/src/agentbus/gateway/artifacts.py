"""Serving artifact bytes from the JetStream object store: streamed, with single-range support.

The bytes are read chunk by chunk through an ordered consumer on the object's
chunk subject and streamed to the client, so a large artifact is never held
in memory whole. `Range: bytes=a-b`, `bytes=a-` and `bytes=-n` get a 206 with
`Content-Range`; a range past the end gets a 416; anything else (several
ranges, another unit, a malformed header) is ignored and the whole file sent.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from litestar import Response
from litestar.exceptions import NotFoundException
from litestar.response import Stream
from nats.js.errors import NotFoundError, ObjectNotFoundError

from agentbus.contracts import subjects
from agentbus.contracts.artifacts import valid_content_type

# Up to 18 digits: any real offset; a longer number is a malformed header, ignored like one.
_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})\Z")
# Types shown in the browser rather than downloaded: data that no browser runs.
INLINE = frozenset({"text/plain", "application/json", "image/png", "image/jpeg", "image/gif", "image/webp"})
CHUNK_WAIT_S = 10.0  # one chunk taking longer than this to arrive is an error, not a hang


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """(first, last) inclusive; None: send everything; False: unsatisfiable (416)."""
    if not header:
        return None
    m = _RANGE.match(header.replace(" ", ""))
    if m is None or (not m.group(1) and not m.group(2)):
        return None  # several ranges, another unit, or malformed: ignore it (RFC 9110 14.2)
    first, last = m.group(1), m.group(2)
    if not first:  # the last n bytes
        n = int(last)
        return False if n == 0 or size == 0 else (max(0, size - n), size - 1)
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None  # invalid: ignore
    if start >= size:
        return False
    return start, end


async def _chunks(js: Any, info: Any, first: int, last: int) -> AsyncIterator[bytes]:
    subject = f"$O.{subjects.ARTIFACTS_BUCKET}.C.{info.nuid}"
    sub = await js.subscribe(subject, stream=f"OBJ_{subjects.ARTIFACTS_BUCKET}", ordered_consumer=True)
    offset = 0
    try:
        while offset <= last:
            msg = await sub.next_msg(timeout=CHUNK_WAIT_S)
            data, lo = msg.data, offset
            offset += len(data)
            if offset > first:
                yield data[max(0, first - lo) : last + 1 - lo]
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()


async def serve(bus: Any, run_id: str, name: str, content_type: str, range_header: str | None) -> Response:
    try:
        info = await bus.objects.get_info(f"{run_id}/{name}")
    except (ObjectNotFoundError, NotFoundError):
        raise NotFoundException(f"artifact {name} of run {run_id} not found") from None
    size = int(info.size or 0)
    if not valid_content_type(content_type):
        content_type = "application/octet-stream"
    # Never a page on the gateway's own origin: only plain data is shown inline, everything else is
    # a download, the browser may not guess another type, and nothing in it may run.
    disposition = "inline" if content_type.split(";")[0].strip().lower() in INLINE else "attachment"
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(name)}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if info.digest:
        headers["ETag"] = f'"{info.digest}"'
    wanted = parse_range(range_header, size)
    if wanted is False:
        return Response(
            {"status_code": 416, "detail": f"range {range_header!r} is outside the artifact's {size} bytes"},
            status_code=416,
            headers={**headers, "Content-Range": f"bytes */{size}"},
        )
    if wanted is None:
        first, last, status = 0, size - 1, 200
    else:
        first, last = wanted  # type: ignore[misc]
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(last - first + 1)
    if size == 0:
        return Response(b"", status_code=200, media_type=content_type, headers=headers)
    return Stream(
        _chunks(bus.js, info, first, last), status_code=status, media_type=content_type, headers=headers
    )

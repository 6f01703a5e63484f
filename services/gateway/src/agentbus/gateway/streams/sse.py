"""`GET /api/runs/{run_id}/events`: a run's events as Server-Sent Events, for curl and HTTP clients.

The same events, bytes and `seq` as `/ws/runs/{run_id}`, through the same hub subscription (replay
from the stored log, then live, per-run seq dedup, a bounded queue). Each event's `id:` is its seq,
so a reconnecting EventSource (or `curl -H "Last-Event-ID: N"`) resumes right after the last event it
got. Without `Last-Event-ID` or `?since=` it starts from the run's first event. The stream ends after
the run's terminal event; a run that has ended with nothing left to send answers 204, which tells an
EventSource to stop reconnecting. A client too slow to keep up gets a comment and the end of the
stream, and resumes with `Last-Event-ID`; heartbeats are comments. A stream whose credential stops
proving an identity (revoked, expired: `credentials.py`) gets a comment saying why and its end; its
EventSource's reconnection is then refused with 401, which stops it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException, TooManyRequestsException
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Stream

from agentbus.contracts import TERMINAL_EVENT_TYPES
from agentbus.contracts.status import TERMINAL_RUN_STATUSES
from agentbus.gateway.access import Access, credential_of, needs
from agentbus.gateway.errors import documented
from agentbus.gateway.params import SseSince, whole_numbers
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.streams.hub import Hub
from agentbus.gateway.streams.subscription import GoingAway, Revoked, TooSlow

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The OpenAPI security scheme of `?token=` (app.py): an EventSource cannot set `Authorization`.
QUERY_TOKEN = "query_token"


def resume_point(last_event_id: str | None, since: int | None) -> int:
    """Where the stream starts: after `Last-Event-ID` when it is a seq, else after `since`, else 0."""
    seq = (last_event_id or "").strip()
    if seq.isdigit() and len(seq) <= 18:  # a longer one is no seq of ours: ignored like any other
        return int(seq)
    return since or 0


async def _events(
    hub: Hub, run_id: str, after: int, slot: AbstractAsyncContextManager[bool], credential: str | None
) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    async with slot as free:
        if not free:  # taken since the check a moment ago
            yield b": too many open streams for this identity\n\n"
            return
        async for chunk in _subscribed(hub, run_id, after, credential):
            yield chunk


async def _subscribed(hub: Hub, run_id: str, after: int, credential: str | None) -> AsyncIterator[bytes]:
    stats = hub.stats
    client = await hub.join(run_id=run_id, since=after, credential=credential)
    stats.open["sse"] += 1
    try:
        async for frame in client.frames():
            stats.frames["sse"] += 1
            if frame is None:
                yield f": heartbeat {datetime.now(UTC).isoformat()}\n\n".encode()
                continue
            yield frame.sse()
            if frame.event_type in TERMINAL_EVENT_TYPES:
                return
    except TooSlow:
        stats.cut_off["too_slow"] += 1
        yield b": client too slow; reconnect with Last-Event-ID\n\n"
    except GoingAway:
        stats.cut_off["shutdown"] += 1
        yield b": gateway shutting down; reconnect with Last-Event-ID\n\n"
    except Revoked as exc:
        stats.cut_off["revoked"] += 1
        yield f": credentials no longer accepted ({exc}); the stream ends\n\n".encode()
    finally:
        stats.open["sse"] -= 1
        hub.leave(client, credential)


@get(
    "/api/runs/{run_id:str}/events",
    tags=["runs"],
    summary="A run's events as Server-Sent Events (replay, then live; resumable with Last-Event-ID)",
    media_type="text/event-stream",
    responses={
        204: ResponseSpec(None, description="the run has ended and nothing is left after the resume point"),
        **documented(404, 429, 503, why={429: "the identity holds GATEWAY_MAX_STREAMS streams already"}),
    },
    before_request=whole_numbers,
    opt=needs("viewer", query_token=True),
    security=[{"bearer": []}, {QUERY_TOKEN: []}],
)
async def run_event_stream(
    request: Request, run_id: str, store: GatewayStore, hub: Hub, access: Access, since: SseSince = None
) -> Stream | Response[None]:
    row = await store.run(run_id)
    if row is None:
        raise NotFoundException(f"run {run_id} not found")
    after = resume_point(request.headers.get("last-event-id"), since)
    if row.status in TERMINAL_RUN_STATUSES and (row.last_seq or 0) <= after:
        return Response(None, status_code=204)
    user = request.scope.get("user")
    if not access.stream_free(user):
        raise TooManyRequestsException(access.streams_refused(), headers={"Retry-After": "1"})
    slot = access.stream(user)
    events = _events(hub, run_id, after, slot, credential_of(request.scope))
    return Stream(events, media_type="text/event-stream", headers=SSE_HEADERS)

"""Following the WebSocket streams across dropped connections: none lost, none repeated.

A run's events carry `seq`, counted from 1 per run with no gaps, so "delivered" is the last `seq`
per run. A run stream resumes with `?since=<last>`, which the gateway replays with no gap and no
duplicate at the seam. The task and all-runs streams resume live, then fill what the gap held from
the stored events (`/logs`, which reflect an event before any stream sends it): the runs already
seen that had not ended, and runs created since watching began; a live event whose `seq` jumps
ahead of a known run's is preceded by the stored ones in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlencode

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agentbus.client import _base
from agentbus.client._async_api import AsyncApi
from agentbus.client.errors import CLOSE_STATUS, ConnectionFailed, ServerError, error_for
from agentbus.client.events import TERMINAL_EVENT_TYPES, RunEvent, event_type, parse_frame

TERMINAL_RUN_STATUSES = frozenset({"completed", "failed", "rejected", "cancelled", "timeout"})
# The gateway sends a heartbeat at least every 15 s: silence this long means a dead connection.
IDLE_TIMEOUT_S = 45.0


class Delivered:
    """The last `seq` delivered per run, and the runs whose terminal event was delivered."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.ended: set[str] = set()

    def take(self, event: RunEvent) -> bool:
        """True the first time an event (run_id, seq) is seen, in order; False for a repeat."""
        if event.seq <= self.last.get(event.run_id, 0):
            return False
        self.last[event.run_id] = event.seq
        if event_type(event) in TERMINAL_EVENT_TYPES:
            self.ended.add(event.run_id)
        return True


async def follow(
    client: AsyncApi,
    *,
    run_id: str | None = None,
    task_id: str | None = None,
    since: int | None = None,
    reconnect_for: float = 120.0,
) -> AsyncIterator[RunEvent]:
    """Events of one run (until its end), of one task's runs, or of every run. `reconnect_for`:
    how long to keep trying while the gateway does not answer before raising ConnectionFailed."""
    seen = Delivered()
    started = datetime.now(UTC)
    if run_id is not None:
        run = await client.get_run(run_id)  # an unknown run is NotFound here, not a silent stream
        seen.last[run_id] = since or 0
        if run.status in TERMINAL_RUN_STATUSES and run.last_seq <= (since or 0):
            return
        path = f"/ws/runs/{_base.seg(run_id)}"
    elif task_id is not None:
        await client.get_task(task_id)
        path = f"/ws/tasks/{_base.seg(task_id)}"
    else:
        path = "/ws/stream"
    headers = _base.auth_headers(client.token)
    connected_once = False
    down_since: float | None = None
    delay = 0.1
    while True:
        params: dict[str, int] = {}
        if run_id is not None:
            params["since"] = seen.last[run_id]
        elif since is not None and not connected_once:
            params["since"] = since
        url = _base.ws_url(client.url) + path + (f"?{urlencode(params)}" if params else "")
        try:
            async with connect(url, additional_headers=headers, open_timeout=10, max_size=2**24) as ws:
                down_since, delay = None, 0.1
                if connected_once and run_id is None:
                    for event in await _backfill(client, seen, task_id, started):
                        yield event
                connected_once = True
                while True:
                    frame = await asyncio.wait_for(ws.recv(), IDLE_TIMEOUT_S)
                    event = parse_frame(frame)
                    if event is None:
                        continue
                    if run_id is None and event.run_id in seen.last:
                        for missed in await _between(client, seen, event):
                            yield missed
                    if seen.take(event):
                        yield event
                    if event.run_id == run_id and event_type(event) in TERMINAL_EVENT_TYPES:
                        return
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            if code in CLOSE_STATUS:
                reason = exc.rcvd.reason if exc.rcvd is not None else ""
                raise error_for(CLOSE_STATUS[code], reason or f"stream refused ({code})") from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (400, 401, 403, 404):
                raise error_for(status, f"stream refused ({status})") from None
        except (OSError, TimeoutError, InvalidHandshake):
            pass
        except (ConnectionFailed, ServerError):  # filling a gap while the gateway comes back: again
            pass
        # The connection dropped or could not be made: try again until `reconnect_for` runs out.
        now = asyncio.get_running_loop().time()
        down_since = now if down_since is None else down_since
        if now - down_since > reconnect_for:
            raise ConnectionFailed(f"the gateway at {client.url} did not answer for {reconnect_for:.0f}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _between(client: AsyncApi, seen: Delivered, event: RunEvent) -> list[RunEvent]:
    """The stored events of a known run between the last one delivered and `event`."""
    last = seen.last[event.run_id]
    if event.seq <= last + 1:
        return []
    stored = await client.all_logs(event.run_id, since=last)
    return [e for e in stored if e.seq < event.seq and seen.take(e)]


async def _backfill(
    client: AsyncApi, seen: Delivered, task_id: str | None, started: datetime
) -> list[RunEvent]:
    """After a reconnect: what the gap held, from the stored events."""
    run_ids = [rid for rid in seen.last if rid not in seen.ended]
    recent = await client.list_runs(task_id=task_id, limit=100)  # newest first
    for run in recent.items:
        if run.id not in seen.last and run.created_at is not None and run.created_at >= started:
            run_ids.append(run.id)
    out: list[RunEvent] = []
    for rid in run_ids:
        out.extend(e for e in await client.all_logs(rid, since=seen.last.get(rid, 0)) if seen.take(e))
    return out

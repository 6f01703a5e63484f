"""`Client`: the blocking client. REST calls are `_sync_api.SyncApi`; a watch drives the async
stream follower (`streams.follow`) on a private event loop, so both clients resume the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

from agentbus.client._sync_api import EventPage, SyncApi
from agentbus.client.aio import AsyncClient
from agentbus.client.events import RunEvent

__all__ = ["Client", "EventPage"]


class Client(SyncApi):
    """`url` (else `AGENTBUS_URL`, else http://127.0.0.1:8000) and `token` (else `AGENTBUS_TOKEN`).
    Errors are `agentbus.client.errors.ApiError` subclasses carrying `status_code` and `detail`."""

    def __enter__(self) -> Client:
        return self

    def watch(self, run_id: str, since: int = 0, reconnect_for: float = 120.0) -> Iterator[RunEvent]:
        """As `AsyncClient.watch`: the run's events until its end, none lost or repeated."""
        return self._iterate(lambda c: c.watch(run_id, since, reconnect_for))

    def watch_task(
        self, task_id: str, since: int | None = None, reconnect_for: float = 120.0
    ) -> Iterator[RunEvent]:
        return self._iterate(lambda c: c.watch_task(task_id, since, reconnect_for))

    def watch_all(self, reconnect_for: float = 120.0) -> Iterator[RunEvent]:
        return self._iterate(lambda c: c.watch_all(reconnect_for))

    def _iterate(self, make: Callable[[AsyncClient], AsyncIterator[RunEvent]]) -> Iterator[RunEvent]:
        loop = asyncio.new_event_loop()
        client = AsyncClient(self.url, self.token or "", self.timeout)
        events = make(client)
        try:
            while True:
                try:
                    yield loop.run_until_complete(anext(events))
                except StopAsyncIteration:
                    return
        finally:
            try:
                loop.run_until_complete(events.aclose())  # type: ignore[attr-defined]
                loop.run_until_complete(client.close())
            finally:
                loop.close()

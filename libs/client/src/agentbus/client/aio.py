"""`AsyncClient`: every REST call (`_async_api.AsyncApi`) and the event streams."""

from __future__ import annotations

from collections.abc import AsyncIterator

from agentbus.client._async_api import AsyncApi, EventPage
from agentbus.client.events import RunEvent
from agentbus.client.streams import follow

__all__ = ["AsyncClient", "EventPage"]


class AsyncClient(AsyncApi):
    """`url` (else `AGENTBUS_URL`, else http://127.0.0.1:8000) and `token` (else `AGENTBUS_TOKEN`).
    Errors are `agentbus.client.errors.ApiError` subclasses carrying `status_code` and `detail`."""

    async def __aenter__(self) -> AsyncClient:
        return self

    def watch(self, run_id: str, since: int = 0, reconnect_for: float = 120.0) -> AsyncIterator[RunEvent]:
        """The run's events with `seq > since`, in order, until its terminal event. A dropped
        connection is resumed (`?since=`) with none lost and none repeated; an unknown run is
        NotFound."""
        return follow(self, run_id=run_id, since=since, reconnect_for=reconnect_for)

    def watch_task(
        self, task_id: str, since: int | None = None, reconnect_for: float = 120.0
    ) -> AsyncIterator[RunEvent]:
        """Events of every run of the task until the caller stops (`since`: first replay each run's
        stored events after it); resumed across dropped connections with none lost or repeated."""
        return follow(self, task_id=task_id, since=since, reconnect_for=reconnect_for)

    def watch_all(self, reconnect_for: float = 120.0) -> AsyncIterator[RunEvent]:
        """Every event of every run from now on, until the caller stops; resumed like watch_task."""
        return follow(self, reconnect_for=reconnect_for)

"""Python client of the agentbus gateway: `Client` (blocking) and `AsyncClient`, typed with msgspec.

from agentbus.client import Client

with Client() as api:  # AGENTBUS_URL / AGENTBUS_TOKEN, else http://127.0.0.1:8000
    task = api.create_task("hello", agent_config={"steps": 3})
    run = api.start_run(task.id)
    for event in api.watch(run.id):
        ...
"""

from agentbus.client.aio import AsyncClient
from agentbus.client.errors import (
    AgentbusError,
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
)
from agentbus.client.events import RunEvent, UnknownEvent, event_type
from agentbus.client.sync import Client

__all__ = [
    "AgentbusError",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RunEvent",
    "ServerError",
    "Unauthorized",
    "UnknownEvent",
    "event_type",
]

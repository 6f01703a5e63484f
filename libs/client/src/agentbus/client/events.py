"""Run events as the WebSocket and `/logs` carry them, decoded into the shared contract's tagged
union (`agentbus.contracts.events`): `PlanReady`, `Progress`, `Completion`, ..."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from agentbus.client.errors import AgentbusError
from agentbus.contracts.events import AnyEvent, Event

TERMINAL_EVENT_TYPES = frozenset({"completion", "failure", "rejected", "cancelled", "timeout"})


class UnknownEvent(msgspec.Struct, kw_only=True):
    """An event of a type this client does not know yet (a newer gateway): kept, not dropped, so
    resuming by `seq` stays gapless."""

    id: str
    seq: int
    event_type: str
    timestamp: datetime
    task_id: str
    run_id: str
    message: str = ""
    data: Any = None


RunEvent = Event | UnknownEvent

_known = msgspec.json.Decoder(AnyEvent)
_unknown = msgspec.json.Decoder(UnknownEvent)
_probe = msgspec.json.Decoder(dict[str, Any])


def event_type(event: RunEvent) -> str:
    if isinstance(event, UnknownEvent):
        return event.event_type
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def parse_frame(raw: bytes | str) -> RunEvent | None:
    """One frame: the event, or None for a heartbeat."""
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        return _known.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        pass
    try:
        probe = _probe.decode(data)
        if probe.get("event_type") == "heartbeat":
            return None
        return _unknown.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise AgentbusError(f"a frame that is not an event: {exc}") from None


def as_dict(event: RunEvent) -> dict[str, Any]:
    """The event as the JSON the gateway sent (`event_type` included, the bus-only `v` left out)."""
    out = msgspec.to_builtins(event)  # a tagged struct carries its `event_type`
    out.pop("v", None)
    return out

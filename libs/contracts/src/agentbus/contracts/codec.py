"""Shared encoders/decoders: reuse them, they are msgspec's fast path."""

from typing import Any

import msgspec

from agentbus.contracts.events import AnyEvent, Event

_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(AnyEvent)


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode_event(data: bytes) -> Event:
    """Decode a run event strictly; raises msgspec.DecodeError/ValidationError on a bad payload."""
    return _event_decoder.decode(data)


def decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(tp)

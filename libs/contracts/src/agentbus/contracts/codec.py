"""Shared encoders/decoders: reuse them, they are msgspec's fast path."""

from typing import Any, Generic, TypeVar

import msgspec

from agentbus.contracts.events import AnyEvent, Event

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


class Decoder(Generic[T]):
    """msgspec's JSON decoder for one type, for bytes off the bus (hostile input): whatever they are,
    it returns a `T` or raises msgspec.DecodeError (ValidationError is one). msgspec itself raises
    RecursionError for JSON nested deeper than it recurses (also inside a field it skips), and
    UnicodeDecodeError for a string that is not UTF-8."""

    __slots__ = ("_decoder",)

    def __init__(self, tp: Any) -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(tp)

    def decode(self, data: bytes) -> T:
        try:
            return self._decoder.decode(data)
        except RecursionError:
            raise msgspec.DecodeError("JSON is malformed: nested too deeply") from None
        except UnicodeDecodeError:
            raise msgspec.DecodeError("JSON is malformed: a string is not UTF-8") from None


_event_decoder: Decoder[Event] = Decoder(AnyEvent)


def decode_event(data: bytes) -> Event:
    """Decode a run event strictly; raises msgspec.DecodeError/ValidationError on a bad payload.

    The bytes must be UTF-8 throughout, fields msgspec skips included: an event is stored and sent
    to stream clients as the text it was published as."""
    event = _event_decoder.decode(data)
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError:
            raise msgspec.DecodeError("JSON is malformed: the event is not UTF-8") from None
    return event


def decoder(tp: Any) -> Decoder[Any]:
    return Decoder(tp)

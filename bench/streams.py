"""Minimal stream clients for the load processes: WebSocket and Server-Sent Events on raw asyncio.

Thousands of them share one process, so they do the least a client can: an HTTP upgrade (or GET)
with the given headers (the benchmarks' `Authorization`, bench.auth), frame parsing, and a callback
per event with the raw JSON bytes. Server frames are never masked and no extension is offered, so a
text frame is a 2..10 byte header and the payload.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec

OnEvent = Callable[[bytes], None]
HEARTBEAT = b'{"event_type":"heartbeat"'


class Head(msgspec.Struct):
    """What a benchmark needs from an event frame; every other field is skipped by the decoder."""

    event_type: str
    timestamp: datetime
    seq: int = 0
    run_id: str = ""


head_decoder = msgspec.json.Decoder(Head)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def event_age_s(timestamp: datetime, now_ns: int) -> float:
    """Seconds from an event's `timestamp` (RFC 3339, to the microsecond) to `now_ns` (time.time_ns()),
    in whole microseconds: no float rounding of the ~1.7e9 s since the epoch on either side."""
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)  # the services write UTC; a naive one is UTC too
    return (now_ns // 1000 - (timestamp - _EPOCH) // _US) / 1e6


def parse_frames(buf: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Whole frames at the start of `buf` as (opcode, payload), and how many bytes they used."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    n = len(buf)
    while n - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        length = b1 & 0x7F
        header = 2
        if length == 126:
            if n - pos < 4:
                break
            length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            header = 4
        elif length == 127:
            if n - pos < 10:
                break
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            header = 10
        if b1 & 0x80:
            header += 4  # a masked frame (never from a server, but parse it right)
        if n - pos < header + length:
            break
        frames.append((b0 & 0x0F, bytes(buf[pos + header : pos + header + length])))
        pos += header + length
    return frames, pos


def close_frame(code: int = 1000) -> bytes:
    """A masked client close frame."""
    payload = code.to_bytes(2, "big")
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x88, 0x80 | len(payload)]) + mask + masked


class StreamClient(asyncio.Protocol):
    """One WebSocket (`sse=False`) or SSE (`sse=True`) subscription; `on_event(raw_json)` per event."""

    def __init__(
        self,
        host: str,
        path: str,
        on_event: OnEvent,
        sse: bool = False,
        stalled: bool = False,
        sample: bool = True,
        headers: dict[str, str] | None = None,
    ):
        self.host = host
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.path = path
        self.on_event = on_event
        self.sse = sse
        self.stalled = stalled
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self.frames = 0  # text frames, heartbeats included
        self.events = 0  # event frames
        self.sample = sample  # hand each event's bytes to on_event (else only count them)
        self.last_event_id: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.sse:
            req = (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: text/event-stream\r\n"
                f"Cache-Control: no-cache\r\n{self.headers}\r\n"
            )
        else:
            key = base64.b64encode(os.urandom(16)).decode()
            req = (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"{self.headers}\r\n"
            )
        transport.write(req.encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = int(bytes(self.buf[: self.buf.find(b"\r\n")]).split(b" ")[1])
            del self.buf[: end + 4]
            if status not in (101, 200):
                self.opened.set_exception(RuntimeError(f"stream answered {status}"))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            self.opened.set_result(None)
            if self.stalled:
                assert self.transport is not None
                self.transport.pause_reading()  # never read again: the server's buffers fill up
                return
        if self.sse:
            self._sse()
        else:
            self._ws()

    def _ws(self) -> None:
        # Inline parsing, and a payload copy only for a sampled client: one process reads every frame
        # of a thousand clients, so this loop is the load generator's own ceiling.
        buf = self.buf
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            header = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                header = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                header = 10
            end = pos + header + length
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            start = pos + header
            pos = end
            if opcode == 1:
                self.frames += 1
                if buf.startswith(HEARTBEAT, start):
                    continue
                self.events += 1
                if self.sample:
                    self.on_event(bytes(buf[start:end]))
            elif opcode == 8:
                self.close_code = int.from_bytes(buf[start : start + 2], "big") if length >= 2 else 1005
                if self.transport is not None:
                    self.transport.write(close_frame(1000))
                    self.transport.close()
        if pos:
            del buf[:pos]

    def _sse(self) -> None:
        # The body is chunked (no Content-Length): chunk-size lines are told apart from event lines by
        # the SSE blank-line framing; only `data:` and `id:` lines matter here.
        while True:
            end = self.buf.find(b"\n\n")
            if end < 0:
                return
            block = bytes(self.buf[:end])
            del self.buf[: end + 2]
            data = None
            for line in block.split(b"\n"):
                line = line.rstrip(b"\r")
                if line.startswith(b"data:"):
                    data = line[5:].lstrip()
                elif line.startswith(b"id:"):
                    self.last_event_id = line[3:].strip().decode()
            if data is not None:
                self.frames += 1
                if not data.startswith(HEARTBEAT):
                    self.events += 1
                if self.sample:
                    self.on_event(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(f"connection lost before the stream opened: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if not self.sse and self.upgraded:
                self.transport.write(close_frame(1000))
            self.transport.close()


async def open_stream(
    host: str,
    port: int,
    path: str,
    on_event: OnEvent,
    sse: bool = False,
    stalled: bool = False,
    sample: bool = True,
    headers: dict[str, str] | None = None,
) -> StreamClient:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if stalled:
        # A small receive window: a client that stops reading fills up after a few frames.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    _, client = await loop.create_connection(
        lambda: StreamClient(f"{host}:{port}", path, on_event, sse, stalled, sample, headers), sock=sock
    )
    await client.opened
    return client

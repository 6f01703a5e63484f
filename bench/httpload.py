"""An HTTP/1.1 load generator: keep-alive connections on raw asyncio protocols (uvloop when present).

Two modes, run as a separate process that prints one JSON object:

- closed loop (`--connections C`, no `--rate`): C connections each send the next request as
  soon as the previous answer arrives; measures the maximum throughput.
- open loop (`--rate R`): requests are due at fixed times R per second whatever the server
  does, and each latency is counted from when the request was due, not when a free
  connection sent it, so a stalled server cannot hide its queueing (no coordinated omission).

    python -m bench.httpload URL [--method POST --body JSON] [--duration S] [--rate R | --connections C]

A body may contain `{n}`, replaced by the request's number (unique names, for example). Every
request carries `Authorization: Bearer <the gateway's admin key, else the token>` (bench.auth).

Only 2xx answers count as served (`ok`, `rps`); any other answer, or a request that failed, is an
error (`errors`, by status in `statuses`): the JSON is printed all the same and the process then
exits with status 1, so a refused request (401, 403, 429: fast) cannot pass for throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from urllib.parse import urlsplit

from bench import auth
from bench.stats import summary


class HttpError(Exception):
    pass


def build_request(
    method: str, host: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse_response(buf: bytearray) -> tuple[int, bytes, int] | None:
    """(status, body, bytes consumed) of the first whole response in `buf`, or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1")
    status_line, _, rest = head.partition("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length = 0
    for line in rest.split("\r\n"):
        name, _, value = line.partition(":")
        lname = name.strip().lower()
        if lname == "content-length":
            length = int(value.strip())
        elif lname == "transfer-encoding" and "chunked" in value.lower():
            raise HttpError("chunked responses are not supported by this client")
    total = end + 4 + length
    if len(buf) < total:
        return None
    return status, bytes(buf[end + 4 : total]), total


class Connection(asyncio.Protocol):
    """One keep-alive connection; `await request(raw)` returns (status, body)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiting: collections.deque[asyncio.Future[tuple[int, bytes]]] = collections.deque()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.waiting:
            parsed = parse_response(self.buf)
            if parsed is None:
                return
            status, body, used = parsed
            del self.buf[:used]
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self.waiting:
            if not fut.done():
                fut.set_exception(HttpError(f"connection lost: {exc}"))
        self.waiting.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        fut = asyncio.get_running_loop().create_future()
        if self.transport is None or self.transport.is_closing():
            fut.set_exception(HttpError("connection closed"))
            return fut
        self.waiting.append(fut)
        self.transport.write(raw)
        return fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Connection, host, port)
    return proto


class Target:
    def __init__(self, url: str, method: str = "GET", body: str = "", headers: dict[str, str] | None = None):
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.method = method
        self.body = body
        self.headers = headers or {}
        self._fixed = (
            None
            if "{n}" in body
            else build_request(method, self.host, self.path, body.encode(), self.headers)
        )

    def raw(self, n: int) -> bytes:
        if self._fixed is not None:
            return self._fixed
        body = self.body.replace("{n}", str(n)).encode()
        return build_request(self.method, self.host, self.path, body, self.headers)


def served(statuses: collections.Counter[int]) -> int:
    """The answers that count: 2xx only."""
    return sum(n for s, n in statuses.items() if 200 <= s < 300)


async def closed_loop(target: Target, connections: int, duration: float, warmup: float = 0.5) -> dict:
    conns = [await connect(target.host, target.port) for _ in range(connections)]
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    errors = 0
    counter = 0
    t_start = time.perf_counter()
    measure_from = t_start + warmup
    stop_at = measure_from + duration

    async def worker(conn: Connection) -> None:
        nonlocal errors, counter
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            counter += 1
            try:
                status, _ = await conn.request(target.raw(counter))
            except HttpError:
                errors += 1
                return
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies.append(t1 - t0)
                statuses[status] += 1
            elif not 200 <= status < 300:
                errors += 1  # not counted in the figures, but refused all the same

    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - measure_from
    for c in conns:
        c.close()
    ok = served(statuses)
    return {
        "mode": "closed",
        "connections": connections,
        "requests": sum(statuses.values()),
        "ok": ok,
        "errors": errors + sum(statuses.values()) - ok,
        "statuses": {str(k): v for k, v in statuses.items()},
        "rps": ok / elapsed,
        **summary(latencies),
    }


async def open_loop(
    target: Target, rate: float, duration: float, max_connections: int = 256, warmup: float = 0.5
) -> dict:
    """Requests due every 1/rate s; latency counted from the due time; the first `warmup` s not counted."""
    idle: collections.deque[Connection] = collections.deque()
    for _ in range(min(64, max_connections)):
        idle.append(await connect(target.host, target.port))
    opened = len(idle)
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    errors = 0
    backlog: collections.deque[tuple[int, float]] = collections.deque()
    inflight: set[asyncio.Task[None]] = set()
    freed = asyncio.Event()

    async def one(conn: Connection, n: int, due: float) -> None:
        nonlocal errors
        try:
            status, _ = await conn.request(target.raw(n))
            if due >= measure_from:
                latencies.append(time.perf_counter() - due)
                statuses[status] += 1
            elif not 200 <= status < 300:
                errors += 1
            idle.append(conn)
        except HttpError:
            errors += 1
        freed.set()

    async def dispatch() -> None:
        nonlocal opened
        while backlog:
            if not idle:
                if opened >= max_connections:
                    return
                opened += 1
                idle.append(await connect(target.host, target.port))
            n, due = backlog.popleft()
            task = asyncio.create_task(one(idle.popleft(), n, due))
            inflight.add(task)
            task.add_done_callback(inflight.discard)

    interval = 1.0 / rate
    total = int(rate * (duration + warmup))
    start = time.perf_counter() + 0.05
    measure_from = start + warmup
    for n in range(total):
        due = start + n * interval
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        backlog.append((n, due))
        await dispatch()
        while backlog and not idle and opened >= max_connections:
            freed.clear()
            await freed.wait()
            await dispatch()
    while backlog:
        freed.clear()
        await freed.wait()
        await dispatch()
    if inflight:
        await asyncio.wait(inflight, timeout=30)
    elapsed = time.perf_counter() - measure_from
    for c in idle:
        c.close()
    ok = served(statuses)
    return {
        "mode": "open",
        "rate": rate,
        "connections": opened,
        "requests": sum(statuses.values()),
        "ok": ok,
        "errors": errors + sum(statuses.values()) - ok,
        "statuses": {str(k): v for k, v in statuses.items()},
        "rps": ok / elapsed,
        **summary(latencies),
    }


def run_loop(coro) -> dict:  # type: ignore[no-untyped-def]
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--method", default="GET")
    p.add_argument("--body", default="")
    p.add_argument("--header", action="append", default=[], help="Name: value")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rate", type=float, default=0.0, help="open loop at this many requests/s")
    a = p.parse_args(argv)
    headers = {**auth.bearer(a.url), **dict(h.split(": ", 1) for h in a.header)}
    target = Target(a.url, a.method, a.body, headers)
    if a.rate > 0:
        result = run_loop(open_loop(target, a.rate, a.duration))
    else:
        result = run_loop(closed_loop(target, a.connections, a.duration))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    if result["errors"]:
        sys.exit(
            f"{a.method} {a.url}: {result['errors']} requests failed or were not answered 2xx, the "
            f"warm-up's included (measured answers by status: {result['statuses']})"
        )


if __name__ == "__main__":
    main()

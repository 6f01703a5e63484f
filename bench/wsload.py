"""Many stream subscribers in one process: delivered frames/s, latency, starvation, slow-client closes.

    python -m bench.wsload BASE_URL PATH --clients N [--stalled K] [--sse] --duration S

Prints `ready` once every client is subscribed, then after `--duration` seconds one JSON object.
Latency is the time from an event's `timestamp` (set by the publisher just before it published)
to its arrival here; both read the same wall clock of this machine.

Each handshake carries `Authorization: Bearer <admin key or token>` (bench.auth). A stream
the gateway refuses (an answer other than 101 / 200, or a WebSocket closed with a 4xxx code: 4401,
4403, 4429...) ends the process with an error, before `ready` if it is refused at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import msgspec

from bench import auth
from bench.stats import summary
from bench.streams import StreamClient, head_decoder, open_stream


def check_refused(clients: list[StreamClient]) -> None:
    """Fail if the gateway closed any client with a 4xxx code: refused, not measured."""
    codes = Counter(c.close_code for c in clients if auth.refused(c.close_code))
    if codes:
        raise RuntimeError(f"the gateway refused {sum(codes.values())} streams (close codes: {dict(codes)})")


async def load(
    base: str, path: str, clients: int, stalled: int, sse: bool, duration: float, connect_batch: int
) -> dict:
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    latencies: list[float] = []
    # Latency is sampled on every n-th client (all of them up to 100 clients); every client counts.
    sample_every = max(1, clients // 100)
    first = last = 0.0
    bad = 0

    def on_event(raw: bytes) -> None:
        nonlocal first, last, bad
        now = time.time()
        try:
            head = head_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            bad += 1
            return
        if head.event_type == "heartbeat":
            return
        latencies.append(now - head.timestamp.timestamp())
        if not first:
            first = now
        last = now

    # Stalled clients are spread among the others, not bunched at one end.
    stalled_idx = set(range(0, clients, max(1, clients // stalled))[:stalled]) if stalled else set()
    conns: list[StreamClient] = []
    stalled_conns: list[StreamClient] = []
    for start in range(0, clients, connect_batch):
        idx = range(start, min(clients, start + connect_batch))
        opened = await asyncio.gather(
            *(
                open_stream(
                    host,
                    port,
                    path,
                    on_event,
                    sse=sse,
                    stalled=i in stalled_idx,
                    # Never a stalled one: what it reads once it reads again is its own backlog, not
                    # the live clients' latency.
                    sample=i % sample_every == 0 and i not in stalled_idx,
                    headers=auth.bearer(port),
                )
                for i in idx
            )
        )
        for i, client in zip(idx, opened, strict=True):
            (stalled_conns if i in stalled_idx else conns).append(client)
    await asyncio.sleep(0.2)  # a refused WebSocket is closed right after its upgrade
    check_refused([*conns, *stalled_conns])
    print("ready", flush=True)
    t0 = time.time()
    cpu0 = time.process_time()
    await asyncio.sleep(duration)
    cpu = time.process_time() - cpu0
    live_counts = [c.events for c in conns]
    closes: dict[str, int] = {}
    for c in [*conns, *stalled_conns]:
        if c.closed.done():
            key = str(c.closed.result())
            closes[key] = closes.get(key, 0) + 1
    # A stalled client reads nothing, not even a close frame: once it reads again, it finds its
    # connection dropped.
    for c in stalled_conns:
        if c.transport is not None and not c.transport.is_closing():
            c.transport.resume_reading()
    await asyncio.sleep(1)
    check_refused([*conns, *stalled_conns])
    stalled_cut_off = sum(1 for c in stalled_conns if c.closed.done())
    live_closed = sum(1 for c in conns if c.closed.done())
    for c in [*conns, *stalled_conns]:
        c.close()
    total = sum(live_counts)
    span = (last - first) if last > first else 0.0
    return {
        "clients": clients,
        "stalled": len(stalled_conns),
        "sse": sse,
        "frames": total,
        "frames_per_s": total / span if span else 0.0,
        "span_s": span,
        "listen_s": time.time() - t0,
        "min_client_frames": min(live_counts) if live_counts else 0,
        "max_client_frames": max(live_counts) if live_counts else 0,
        "live_closed": live_closed,
        "stalled_cut_off": stalled_cut_off,
        "closes": closes,
        "undecodable": bad,
        # This process's own CPU while listening: on 2 cores the client competes with the server.
        "client_cpu_s": cpu,
        "client_cores": cpu / duration,
        **summary(latencies),
    }


def main(argv: list[str] | None = None) -> None:
    import uvloop

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base")
    p.add_argument("path")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--stalled", type=int, default=0)
    p.add_argument("--sse", action="store_true")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--connect-batch", type=int, default=50)
    a = p.parse_args(argv)
    result = uvloop.run(load(a.base, a.path, a.clients, a.stalled, a.sse, a.duration, a.connect_batch))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

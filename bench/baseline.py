"""The ceilings the figures are compared with, measured on the same machine in the same run.

- `python -m bench.baseline http --port P`: a bare Litestar handler returning a constant msgspec
  struct, served exactly like the gateway (uvicorn, httptools, uvloop, one process).
- `python -m bench.baseline nats --url URL`: a bare nats-py request/reply round trip (a responder
  callback answering a requester in another process), the ceiling for anything on the bus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import msgspec

from bench.stats import summary


class Constant(msgspec.Struct):
    id: str
    name: str
    status: str
    total_runs: int


CONSTANT = Constant(id="0" * 32, name="baseline", status="pending", total_runs=0)


def http_app():  # type: ignore[no-untyped-def]
    from litestar import Litestar, get

    @get("/api/tasks/{task_id:str}")
    async def constant(task_id: str) -> Constant:
        return CONSTANT

    return Litestar([constant], debug=False, logging_config=None, openapi_config=None)


def serve_http(port: int) -> None:
    import uvicorn

    uvicorn.run(
        http_app(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


async def nats_responder(url: str, subject: str, ready: str | None) -> None:
    import nats

    nc = await nats.connect(url)

    async def cb(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(msg.data)

    await nc.subscribe(subject, cb=cb)
    await nc.flush()
    if ready:
        print(ready, flush=True)
    await asyncio.Event().wait()


async def nats_requester(url: str, subject: str, duration: float, concurrency: int) -> dict:
    import nats

    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    payload = b'{"v":1,"probe":"' + b"x" * 200 + b'"}'
    for _ in range(200):  # warm up
        await nc.request(subject, payload, timeout=5)
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await nc.request(subject, payload, timeout=5)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await nc.close()
    return {"concurrency": concurrency, "rps": len(latencies) / elapsed, **summary(latencies)}


def main(argv: list[str] | None = None) -> None:
    import uvloop

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("http")
    h.add_argument("--port", type=int, required=True)
    r = sub.add_parser("responder")
    r.add_argument("--url", required=True)
    r.add_argument("--subject", default="bench.echo")
    q = sub.add_parser("requester")
    q.add_argument("--url", required=True)
    q.add_argument("--subject", default="bench.echo")
    q.add_argument("--duration", type=float, default=3.0)
    q.add_argument("--concurrency", type=int, default=1)
    a = p.parse_args(argv)
    if a.cmd == "http":
        serve_http(a.port)
    elif a.cmd == "responder":
        uvloop.run(nats_responder(a.url, a.subject, "ready"))
    else:
        result = uvloop.run(nats_requester(a.url, a.subject, a.duration, a.concurrency))
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()

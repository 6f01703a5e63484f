"""Create runs and time each from its POST to its `completion` event on `/ws/stream`.

    python -m bench.runload BASE_URL --task T (--rate R --duration S | --count N --concurrency C)

With `--rate`, runs are created open loop at R per second; with `--count`, N runs are created by C
concurrent callers as fast as the gateway answers. The stream client is subscribed before the first
create, so no completion is missed, and nothing polls.

It also times every `progress` event on the stream from its own `timestamp` (set by the runner
when it emitted the event) to its arrival here (`progress_p50_ms`, ...): the runner's real path,
runner -> NATS -> gateway (stored) -> client, on this machine's one wall clock.

Every request and the stream's handshake carry `Authorization: Bearer <admin key or token>`
(bench.auth). A create not answered 201, or the stream closed with a 4xxx code
(refused), ends the process with an error after printing its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import msgspec

from bench import auth
from bench.httpload import build_request, connect
from bench.stats import summary
from bench.streams import event_age_s, head_decoder, open_stream


class Created(msgspec.Struct):
    id: str


_created = msgspec.json.Decoder(Created)


async def load(base: str, task_id: str, rate: float, duration: float, count: int, concurrency: int) -> dict:
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    done_at: dict[str, float] = {}
    created_at: dict[str, float] = {}
    all_done = asyncio.Event()
    expected = count if count else int(rate * duration)
    progress_ages: list[float] = []

    def on_event(raw: bytes) -> None:
        now_ns = time.time_ns()
        head = head_decoder.decode(raw)
        if head.event_type == "progress":
            progress_ages.append(event_age_s(head.timestamp, now_ns))
        elif head.event_type in ("completion", "failure", "cancelled", "timeout", "rejected"):
            done_at[head.run_id] = time.perf_counter()
            if len(done_at) >= expected and all(r in done_at for r in created_at):
                all_done.set()

    stream = await open_stream(host, port, "/ws/stream", on_event, headers=auth.bearer(port))
    await asyncio.sleep(0.2)  # a refused WebSocket is closed right after its upgrade
    if auth.refused(stream.close_code):
        raise RuntimeError(f"the gateway refused the stream on /ws/stream (closed with {stream.close_code})")
    payload = json.dumps({"task_id": task_id}).encode()
    raw = build_request("POST", f"{host}:{port}", "/api/runs", payload, auth.bearer(port))
    errors = 0
    statuses: dict[int, int] = {}

    async def create(conn) -> None:  # type: ignore[no-untyped-def]
        nonlocal errors
        t0 = time.perf_counter()
        status, body = await conn.request(raw)
        if status != 201:
            errors += 1
            statuses[status] = statuses.get(status, 0) + 1
            return
        created_at[_created.decode(body).id] = t0

    t_start = time.perf_counter()
    if count:
        conns = [await connect(host, port) for _ in range(concurrency)]
        queue = list(range(count))

        async def worker(conn) -> None:  # type: ignore[no-untyped-def]
            while queue:
                queue.pop()
                await create(conn)

        await asyncio.gather(*(worker(c) for c in conns))
    else:
        conns = [await connect(host, port) for _ in range(32)]
        idle = list(conns)
        tasks = set()
        interval = 1.0 / rate
        for i in range(expected):
            due = t_start + i * interval
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            while not idle:
                idle.append(await connect(host, port))
            conn = idle.pop()

            async def one(conn=conn) -> None:  # type: ignore[no-untyped-def]
                await create(conn)
                idle.append(conn)

            t = asyncio.create_task(one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    created_span = time.perf_counter() - t_start
    if all(r in done_at for r in created_at):
        all_done.set()
    try:
        await asyncio.wait_for(all_done.wait(), timeout=60)
    except TimeoutError:
        pass
    finished = [r for r in created_at if r in done_at]
    latencies = [done_at[r] - created_at[r] for r in finished]
    last_done = max((done_at[r] for r in finished), default=t_start)
    stream_closed = stream.close_code
    stream.close()
    for c in conns:
        c.close()
    return {
        "created": len(created_at),
        "completed": len(finished),
        "errors": errors,
        "error_statuses": {str(k): v for k, v in statuses.items()},
        "stream_closed": stream_closed,
        "create_per_s": len(created_at) / created_span,
        "runs_per_s": len(finished) / (last_done - t_start) if finished else 0.0,
        **summary(latencies),
        **{f"progress_{k}": v for k, v in summary(progress_ages).items()},
    }


def main(argv: list[str] | None = None) -> None:
    import uvloop

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base")
    p.add_argument("--task", required=True)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=16)
    a = p.parse_args(argv)
    result = uvloop.run(load(a.base, a.task, a.rate, a.duration, a.count, a.concurrency))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    if result["errors"]:
        sys.exit(f"{result['errors']} creates not answered 201 (by status: {result['error_statuses']})")
    if auth.refused(result["stream_closed"]):
        sys.exit(f"the gateway refused the stream on /ws/stream (closed with {result['stream_closed']})")


if __name__ == "__main__":
    main()

"""Park runs awaiting approval, then approve them all and time the drain.

    python -m bench.parkload BASE_URL --task T park --count N --out FILE
    python -m bench.parkload BASE_URL approve --ids FILE --concurrency C

`park` creates N runs of a task that needs approval (C concurrent callers) and returns once every
one has announced `approval_required` on `/ws/stream` (the runner parks a run right after it); the
run ids go to FILE. `approve` approves every run in FILE (C concurrent callers) and times, on
`/ws/stream`, from the first approval to the last of their `completion` events (`runs_per_s`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from bench.httpload import build_request, connect
from bench.streams import head_decoder, open_stream


class Created(msgspec.Struct):
    id: str


_created = msgspec.json.Decoder(Created)
ENDED = ("completion", "failure", "cancelled", "timeout", "rejected")


async def _callers(host: str, port: int, requests: list[bytes], concurrency: int) -> list[tuple[int, bytes]]:
    conns = [await connect(host, port) for _ in range(concurrency)]
    queue = list(reversed(requests))
    answers: list[tuple[int, bytes]] = []

    async def worker(conn) -> None:  # type: ignore[no-untyped-def]
        while queue:
            answers.append(await conn.request(queue.pop()))

    await asyncio.gather(*(worker(c) for c in conns))
    for c in conns:
        c.close()
    return answers


async def park(base: str, task_id: str, count: int, concurrency: int) -> tuple[dict, list[str]]:
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    waiting: set[str] = set()
    created: set[str] = set()
    all_waiting = asyncio.Event()

    def on_event(raw: bytes) -> None:
        head = head_decoder.decode(raw)
        if head.event_type == "approval_required":
            waiting.add(head.run_id)
            if len(waiting) >= count and created <= waiting:
                all_waiting.set()

    stream = await open_stream(host, port, "/ws/stream", on_event)
    body = json.dumps({"task_id": task_id}).encode()
    t0 = time.perf_counter()
    answers = await _callers(
        host, port, [build_request("POST", f"{host}:{port}", "/api/runs", body)] * count, concurrency
    )
    created.update(_created.decode(b).id for status, b in answers if status == 201)
    if created <= waiting:
        all_waiting.set()
    try:
        await asyncio.wait_for(all_waiting.wait(), timeout=600)
    except TimeoutError:
        pass
    stream.close()
    result = {
        "created": len(created),
        "parked": len(created & waiting),
        "errors": count - len(created),
        "park_per_s": len(created & waiting) / (time.perf_counter() - t0),
    }
    return result, sorted(created)


async def approve(base: str, ids: list[str], concurrency: int) -> dict:
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    wanted = set(ids)
    done: dict[str, float] = {}
    all_done = asyncio.Event()

    def on_event(raw: bytes) -> None:
        head = head_decoder.decode(raw)
        if head.event_type in ENDED and head.run_id in wanted:
            done[head.run_id] = time.perf_counter()
            if len(done) >= len(wanted):
                all_done.set()

    stream = await open_stream(host, port, "/ws/stream", on_event)
    body = b'{"approved": true}'
    requests = [build_request("POST", f"{host}:{port}", f"/api/runs/{i}/approve", body) for i in ids]
    t0 = time.perf_counter()
    answers = await _callers(host, port, requests, concurrency)
    approved_span = time.perf_counter() - t0
    try:
        await asyncio.wait_for(all_done.wait(), timeout=600)
    except TimeoutError:
        pass
    stream.close()
    last = max(done.values(), default=t0)
    return {
        "approved": sum(1 for status, _ in answers if status == 200),
        "completed": len(done),
        "approve_per_s": len(ids) / approved_span,
        "runs_per_s": len(done) / (last - t0) if done else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    import uvloop

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base")
    p.add_argument("--task")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out", type=Path)
    p.add_argument("--ids", type=Path)
    p.add_argument("what", choices=("park", "approve"))
    a = p.parse_args(argv)
    if a.what == "park":
        result, ids = uvloop.run(park(a.base, a.task, a.count, a.concurrency))
        a.out.write_text("\n".join(ids))
    else:
        result = uvloop.run(approve(a.base, a.ids.read_text().split(), a.concurrency))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

"""Park runs awaiting approval, then approve them all and time the drain.

    python -m bench.parkload BASE_URL --task T park --count N --out FILE
    python -m bench.parkload BASE_URL --task T approve --ids FILE --concurrency C

`park` creates N runs of a task that needs approval (C concurrent callers) and returns once every
one is `awaiting_approval` (the runner parks a run as soon as it asks); the run ids go to FILE.
`approve` approves every run in FILE (C concurrent callers) and times the drain: from the first
approval to the last run's `completed_at` (the runner's own completion time, read back once all
have completed) gives `runs_per_s`.

Both wait by reading the task's run totals twice a second (`?task_id=&status=`, counted from kept
totals, so the reads cost nothing measurable). Not a stream: one stream client would fall behind
the burst of events that 10,000 approvals cause while its process also sends the approvals, and be
cut off (1013).

Every request carries `Authorization: Bearer <admin key or token>` (bench.auth); an answer
that is not 2xx ends the process with an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgspec

from bench import auth
from bench.httpload import build_request, connect


class Created(msgspec.Struct):
    id: str


class Done(msgspec.Struct):
    completed_at: datetime | None = None


class Page(msgspec.Struct):
    items: list[Done]
    total: int
    next_cursor: str | None = None


_created = msgspec.json.Decoder(Created)
_page = msgspec.json.Decoder(Page)


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
    refused = Counter(status for status, _ in answers if not 200 <= status < 300)
    if refused:
        raise RuntimeError(f"{refused.total()} requests not answered 2xx (by status: {dict(refused)})")
    return answers


async def _until_total(http: httpx.AsyncClient, task_id: str, status: str, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        r = await http.get("/api/runs", params={"task_id": task_id, "status": status, "limit": 1})
        r.raise_for_status()
        total = _page.decode(r.content).total
        if total >= n or time.monotonic() > deadline:
            return total
        await asyncio.sleep(0.5)


async def park(base: str, task_id: str, count: int, concurrency: int) -> tuple[dict, list[str]]:
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = json.dumps({"task_id": task_id}).encode()
    t0 = time.perf_counter()
    request = build_request("POST", f"{host}:{port}", "/api/runs", body, auth.bearer(port))
    answers = await _callers(host, port, [request] * count, concurrency)
    created = [_created.decode(b).id for status, b in answers if status == 201]
    async with httpx.AsyncClient(base_url=base, headers=auth.bearer(port), timeout=30) as http:
        waiting = await _until_total(http, task_id, "awaiting_approval", len(created), 1200)
    result = {
        "created": len(created),
        "parked": waiting,
        "errors": count - len(created),
        "park_per_s": waiting / (time.perf_counter() - t0),
    }
    return result, created


async def approve(base: str, task_id: str, ids: list[str], concurrency: int) -> dict:
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = b'{"approved": true}'
    headers = auth.bearer(port)
    requests = [build_request("POST", f"{host}:{port}", f"/api/runs/{i}/approve", body, headers) for i in ids]
    started = datetime.now().astimezone()
    t0 = time.perf_counter()
    answers = await _callers(host, port, requests, concurrency)
    approved_span = time.perf_counter() - t0
    async with httpx.AsyncClient(base_url=base, headers=auth.bearer(port), timeout=30) as http:
        completed = await _until_total(http, task_id, "completed", len(ids), 1200)
        last = started
        cursor: str | None = None
        while True:  # every completed run of the task: the last completion time
            params = {"task_id": task_id, "status": "completed", "limit": 100}
            answer = await http.get("/api/runs", params={**params, "cursor": cursor} if cursor else params)
            answer.raise_for_status()
            page = _page.decode(answer.content)
            last = max([last, *(r.completed_at for r in page.items if r.completed_at is not None)])
            cursor = page.next_cursor
            if cursor is None:
                break
    span = (last - started).total_seconds()
    return {
        "approved": sum(1 for status, _ in answers if status == 200),
        "completed": completed,
        "approve_per_s": len(ids) / approved_span,
        "runs_per_s": completed / span if span > 0 else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    import uvloop

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base")
    p.add_argument("--task", required=True)
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
        result = uvloop.run(approve(a.base, a.task, a.ids.read_text().split(), a.concurrency))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

"""A small async client used by the end-to-end tests: HTTP with httpx, WebSockets with websockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.support.waiting import eventually

TERMINAL = {"completion", "failure", "rejected", "cancelled", "timeout"}


class Api:
    def __init__(self, base_url: str, ws_url: str, token: str | None = None) -> None:
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30, headers=self.headers)
        self.ws_url = ws_url

    async def close(self) -> None:
        await self.http.aclose()

    async def task(self, **fields: Any) -> dict[str, Any]:
        r = await self.http.post("/api/tasks", json={"name": "e2e task", **fields})
        assert r.status_code == 201, r.text
        return r.json()

    async def run(self, task_id: str, **fields: Any) -> dict[str, Any]:
        r = await self.http.post("/api/runs", json={"task_id": task_id, **fields})
        assert r.status_code == 201, r.text
        return r.json()

    async def get_run(self, run_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/api/runs/{run_id}")
        assert r.status_code == 200, r.text
        return r.json()

    async def logs(self, run_id: str, since: int = 0) -> list[dict[str, Any]]:
        r = await self.http.get(f"/api/runs/{run_id}/logs", params={"since": since, "limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["items"]

    async def wait_status(self, run_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            run = await self.get_run(run_id)
            return run if run["status"] in statuses else None

        return await eventually(check, timeout, f"run {run_id} in {statuses}")

    def ws(self, path: str) -> Any:
        return connect(
            f"{self.ws_url}{path}", max_queue=None, open_timeout=10, additional_headers=self.headers
        )


async def next_event(ws: ClientConnection, timeout: float = 20, heartbeats: bool = False) -> dict[str, Any]:
    """The next frame, skipping heartbeats unless asked for."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if heartbeats or frame.get("event_type") != "heartbeat":
            return frame


async def events_until(
    ws: ClientConnection, stop: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    out: list[dict[str, Any]] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"stream did not finish in {timeout}s; got {[e['event_type'] for e in out]}")
        event = await next_event(ws, remaining)
        out.append(event)
        if stop(event):
            return out


def assert_gapless(events: list[dict[str, Any]]) -> None:
    by_run: dict[str, list[int]] = {}
    for e in events:
        by_run.setdefault(e["run_id"], []).append(e["seq"])
    for run_id, seqs in by_run.items():
        assert seqs == list(range(1, len(seqs) + 1)), f"run {run_id}: seqs {seqs}"

"""Fault-injection workload and the invariants every fault test checks afterwards.

A workload is a batch of runs on two tasks (one with approval, one without),
an approver that approves every waiting run through any gateway, and at the
end `check_invariants`, which counts what was lost (must be 0):
- every started run is terminal;
- per run, the stored log has seq 1..n with no gap or duplicate and exactly one
  terminal event, the last one; a WebSocket reconnecting with since=0 gets
  exactly the same seqs;
- task counters and metric counts match the runs exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.client import TERMINAL, Api, next_event

STATUS_OF = {"completion": "completed", "failure": "failed", "rejected": "rejected", "cancelled": "cancelled"}
RESULTS = Path(os.environ.get("AGENTBUS_RELIABILITY_RESULTS", "var/reliability-results.jsonl"))
SOAK = os.environ.get("AGENTBUS_SOAK") == "1"


def seeded() -> random.Random:
    seed = int(os.environ.get("AGENTBUS_FAULT_SEED", str(int(time.time()))))
    print(f"fault seed {seed} (AGENTBUS_FAULT_SEED={seed} reproduces the timing)")
    return random.Random(seed)


@dataclass
class Workload:
    apis: list[Api]
    runs: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    approver: asyncio.Task[None] | None = None
    approve: bool = True

    async def start(self, n: int, steps: int = 4, delay_ms: int = 100, approval_timeout_s: int = 300) -> None:
        api = self.apis[0]
        config = {"steps": steps, "step_delay_ms": delay_ms}
        self.tasks = [
            await api.task(name="with approval", agent_config=config, approval_timeout_s=approval_timeout_s),
            await api.task(name="no approval", require_approval=False, agent_config=config),
        ]
        for i in range(n):
            self.runs.append(await retry(lambda i=i: api.run(self.tasks[i % 2]["id"])))
        if self.approve:
            self.approver = asyncio.create_task(self._approve_loop())

    async def _approve_loop(self) -> None:
        i = 0
        while True:
            api = self.apis[i % len(self.apis)]
            i += 1
            try:
                page = await api.http.get("/api/runs", params={"status": "awaiting_approval", "limit": 100})
                for run in page.json()["items"] if page.status_code == 200 else []:
                    await api.http.post(f"/api/runs/{run['id']}/approve", json={"approved": True})
            except (httpx.HTTPError, KeyError, ValueError):
                pass  # a gateway being killed or restarted: try another one next round
            except RuntimeError:
                return  # the test is over and closed its clients
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.approver is not None:
            self.approver.cancel()


async def retry(op, attempts: int = 60):  # type: ignore[no-untyped-def]
    """A user retries a request that fails while something restarts (503 or a refused connection)."""
    for i in range(attempts):
        try:
            return await op()
        except (AssertionError, httpx.HTTPError):
            if i == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


async def wait_terminal(api: Api, run_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    final: dict[str, dict[str, Any]] = {}
    while True:
        for rid in run_ids:
            if rid in final:
                continue
            try:
                run = await api.get_run(rid)
            except (AssertionError, httpx.HTTPError):
                continue
            if run["status"] in {"completed", "failed", "rejected", "cancelled", "timeout"}:
                final[rid] = run
        if len(final) == len(run_ids) or time.monotonic() > deadline:
            return final
        await asyncio.sleep(0.2)


async def replay_seqs(api: Api, run_id: str, n: int) -> list[int]:
    async with api.ws(f"/ws/runs/{run_id}?since=0") as ws:
        return [(await next_event(ws, timeout=10))["seq"] for _ in range(n)]


async def check_invariants(
    fault: str,
    api: Api,
    work: Workload,
    timeout: float = 120,
    expect: set[str] | None = None,
    ws_sample: int = 5,
) -> dict[str, Any]:
    """Check every invariant, record a result row, and fail unless nothing was lost."""
    expect = expect or {"completed"}
    ids = [r["id"] for r in work.runs]
    final = await wait_terminal(api, ids, timeout)
    problems: list[str] = [f"run {rid} not terminal" for rid in ids if rid not in final]
    counts: dict[str, dict[str, int]] = {
        t["id"]: {"total": 0, "completed": 0, "failed": 0} for t in work.tasks
    }
    for rid, run in final.items():
        if run["status"] not in expect:
            problems.append(f"run {rid} ended {run['status']}: {run['error_message']}")
        logs = await settled_logs(api, rid)
        seqs = [e["seq"] for e in logs]
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"run {rid}: stored seqs {seqs}")
        terminal = [e for e in logs if e["event_type"] in TERMINAL]
        if len(terminal) != 1 or logs[-1]["event_type"] not in TERMINAL:
            problems.append(f"run {rid}: terminal events {[e['event_type'] for e in terminal]}")
        c = counts[run["task_id"]]
        c["total"] += 1
        c["completed"] += run["status"] == "completed"
        c["failed"] += run["status"] in ("failed", "timeout")
    for rid in ids[:ws_sample]:
        if rid in final:
            n = len(await api.logs(rid))
            got = await replay_seqs(api, rid, n)
            if got != list(range(1, n + 1)):
                problems.append(f"run {rid}: websocket replay {got}")
    for task in work.tasks:
        t = (await api.http.get(f"/api/tasks/{task['id']}")).json()
        c = counts[task["id"]]
        got = (t["total_runs"], t["successful_runs"], t["failed_runs"])
        if got != (c["total"], c["completed"], c["failed"]):
            problems.append(f"task {task['id']}: counters {got}, runs say {c}")
        summary = await metrics_count(api, task["id"], c["total"])
        if summary != c["total"]:
            problems.append(f"task {task['id']}: {summary} duration metrics for {c['total']} runs")
    row = {
        "fault": fault,
        "runs": len(ids),
        "terminal": len(final),
        "checked": "terminal; seq 1..n in log and on WS replay; one terminal event; task counters; metrics",
        "lost": len(problems),
        "problems": problems[:20],
    }
    record(row)
    assert row["lost"] == 0, "\n".join(problems)
    return row


def record(row: dict[str, Any]) -> None:
    """Append a result row; `scripts/reliability_report.py` turns the rows into docs/reliability.md."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")


async def settled_logs(api: Api, run_id: str, timeout: float = 10) -> list[dict[str, Any]]:
    """The stored log once it is gapless: with several gateway copies, the copy storing an earlier
    event may commit a moment after the one that stored the terminal event."""
    deadline = time.monotonic() + timeout
    while True:
        logs = await api.logs(run_id)
        if [e["seq"] for e in logs] == list(range(1, len(logs) + 1)) or time.monotonic() > deadline:
            return logs
        await asyncio.sleep(0.1)


async def metrics_count(api: Api, task_id: str, want: int, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        r = await api.http.get(f"/api/metrics/task/{task_id}/summary")
        if r.status_code == 200:
            got = r.json()["metrics"].get("duration", {}).get("count", 0)
            if got == want:
                return got
        await asyncio.sleep(0.2)
    return got

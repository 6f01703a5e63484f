"""`GET /api/runs/{id}/events`: Server-Sent Events over the same hub path as the WebSocket."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.client import TERMINAL, Api
from tests.support.system import System

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
FAST = {"steps": 2, "step_delay_ms": 20}


def parse_sse(text: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """(id, event) pairs and comment lines of an SSE body."""
    events, comments = [], []
    for block in text.split("\n\n"):
        ident, data = None, None
        for line in block.split("\n"):
            if line.startswith("id: "):
                ident = int(line[4:])
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line.startswith(":"):
                comments.append(line)
        if data is not None:
            events.append((ident, data))
    return events, comments


async def read_events(
    api: Api, run_id: str, count: int | None = None, **headers: str
) -> list[tuple[int, dict]]:
    """Read the stream until it ends (or `count` events), then disconnect."""
    out: list[tuple[int, dict]] = []
    buf = ""
    async with api.http.stream("GET", f"/api/runs/{run_id}/events", headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        async for chunk in r.aiter_text():
            buf += chunk
            while "\n\n" in buf:
                block, buf = buf.split("\n\n", 1)
                events, _ = parse_sse(block + "\n\n")
                out += events
                if count is not None and len(out) >= count:
                    return out
    return out


async def test_sse_replays_then_follows_live_and_ends_after_the_terminal_event(api: Api) -> None:
    task = await api.task(agent_config=FAST)
    run = await api.run(task["id"])
    await api.wait_status(run["id"], "awaiting_approval")
    first = await read_events(api, run["id"], count=3)
    assert [(i, e["event_type"]) for i, e in first] == [
        (1, "analysis_start"),
        (2, "plan_ready"),
        (3, "approval_required"),
    ]
    # Resume after seq 3 with Last-Event-ID, approve, and follow the rest live until the stream ends.
    r = await api.http.post(f"/api/runs/{run['id']}/approve", json={"approved": True})
    assert r.status_code == 200, r.text
    rest = await read_events(api, run["id"], **{"Last-Event-ID": "3"})
    ids = [i for i, _ in first + rest]
    assert ids == list(range(1, len(ids) + 1)), "no gap and no duplicate across the resume"
    assert rest[-1][1]["event_type"] in TERMINAL and rest[0][1]["event_type"] == "approved"
    # The same events, byte for byte as stored, as /logs (and so as the WebSocket) gives them.
    assert [e for _, e in first + rest] == await api.logs(run["id"])
    assert all(e["seq"] == i for i, e in first + rest)
    # Nothing left after the terminal event: 204 tells an EventSource to stop reconnecting.
    r = await api.http.get(f"/api/runs/{run['id']}/events", headers={"Last-Event-ID": str(ids[-1])})
    assert r.status_code == 204
    since = await read_events(api, run["id"], **{"Last-Event-ID": "5"})
    assert [i for i, _ in since] == ids[5:]


async def test_sse_heartbeats_are_comments_and_unknown_runs_are_404(api: Api) -> None:
    task = await api.task(agent_config=FAST)
    run = await api.run(task["id"])
    await api.wait_status(run["id"], "awaiting_approval")
    buf = ""
    async with api.http.stream("GET", f"/api/runs/{run['id']}/events?since=3") as r:
        async for chunk in r.aiter_text():
            buf += chunk
            if ": heartbeat" in buf:
                break
    events, comments = parse_sse(buf)
    assert events == [] and any(c.startswith(": heartbeat ") for c in comments)
    r = await api.http.get("/api/runs/no-such-run/events")
    assert r.status_code == 404 and r.json()["status_code"] == 404
    await api.http.post(f"/api/runs/{run['id']}/cancel")


async def test_readme_sse_example_runs_as_written(api: Api, system: System) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Server-Sent Events", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks
    task = await api.task(require_approval=False, agent_config=FAST)
    run = await api.run(task["id"])
    await api.wait_status(run["id"], "completed")
    port = system.base_url.rsplit(":", 1)[1]
    script = "set -euo pipefail\n" + "\n".join(blocks).replace("localhost:8000", f"localhost:{port}")
    out = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", script],
        env={**os.environ, "RUN": run["id"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    events, _ = parse_sse(out.stdout)
    seqs = [i for i, _ in events]
    last = seqs.index(1, 1) - 1 if seqs.count(1) > 1 else None  # where the first stream ended
    end = next(n for n, (_, e) in enumerate(events) if e["event_type"] in TERMINAL)
    assert seqs[: end + 1] == list(range(1, end + 2)) and last is None
    assert seqs[end + 1 :] == list(range(5, end + 2)), "the second command resumes after Last-Event-ID 4"

"""Real agents end to end: the `openai` kind and the `team` plug-in against a scripted OpenAI-compatible
server on loopback, driven over HTTP and WebSocket like a user.

A system of its own: its runner takes the model defaults, prices and a limit of
one `openai` run at a time from the environment, as a deployment would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import TERMINAL, Api, assert_gapless, events_until
from tests.support.fake_openai import FakeOpenAI, Reply, Request
from tests.support.system import System, start_system
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

KEY = "sk-e2e-SECRET-0123456789"
PRICES = {"fake-model": {"prompt": 3.0, "completion": 15.0}}
TERMINAL_STATUSES = ("completed", "failed", "rejected", "cancelled", "timeout")
ANSWER = "Subjects route messages; streams keep them. Read https://docs.nats.io/nats-concepts for more. "


@pytest.fixture(scope="module")
def model() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def agents_system(model: FakeOpenAI) -> Iterator[System]:
    system = start_system(
        OPENAI_BASE_URL=model.url,
        OPENAI_MODEL="fake-model",
        OPENAI_API_KEY=KEY,
        RUNNER_MODEL_PRICES=json.dumps(PRICES),
        RUNNER_AGENT_CONCURRENCY="openai=1",
    )
    try:
        yield system
    finally:
        system.stop()


@pytest.fixture
async def api(agents_system: System, model: FakeOpenAI) -> AsyncIterator[Api]:
    model.reset()
    client = Api(agents_system.base_url, agents_system.ws_url)
    try:
        yield client
    finally:
        await client.close()


def system_prompt(req: Request) -> str:
    return str(req.json["messages"][0]["content"])


async def test_openai_run_with_a_plan_revision_streams_and_reports_cost(
    api: Api, model: FakeOpenAI, agents_system: System
) -> None:
    def respond(req: Request) -> Reply:
        if req.wants_plan:
            if "fewer steps" in req.user_text:
                return Reply.plan("Explain subjects and streams")
            return Reply.plan("Explain subjects", "Explain streams")
        return Reply.chat(ANSWER, usage=(50, 25), chunk_chars=3, delay_s=0.01)

    model.responder = respond
    task = await api.task(name="NATS in a paragraph", agent="openai")
    run = await api.run(task["id"])
    rid = run["id"]
    async with api.ws(f"/ws/runs/{rid}?since=0") as ws:
        seen = await events_until(ws, lambda e: e["event_type"] == "approval_required")
        assert seen[-1]["data"]["version"] == 1 and len(seen[-1]["data"]["plan"]["steps"]) == 2
        r = await api.http.post(
            f"/api/runs/{rid}/approve", json={"approved": False, "revise": True, "feedback": "fewer steps"}
        )
        assert r.status_code == 200, r.text
        seen += await events_until(ws, lambda e: e["event_type"] == "approval_required")
        assert seen[-1]["data"]["version"] == 2
        assert seen[-1]["data"]["plan"]["steps"] == [
            {"title": "Explain subjects and streams", "description": "Do explain subjects and streams"}
        ]
        r = await api.http.post(f"/api/runs/{rid}/approve", json={"approved": True, "feedback": "go"})
        assert r.status_code == 200 and r.json()["approval"]["plan_version"] == 2
        seen += await events_until(ws, lambda e: e["event_type"] in TERMINAL)
    types = [e["event_type"] for e in seen]
    assert [t for t in types if t != "progress"] == [
        "analysis_start",
        "plan_ready",
        "approval_required",
        "revision_requested",
        "plan_ready",
        "approval_required",
        "approved",
        "artifact",
        "artifact",
        "completion",
    ], types
    assert types[-1] == "completion", seen[-1]
    assert_gapless(seen)
    streamed = [e for e in seen if e["event_type"] == "progress" and "partial" in e["data"]]
    assert any(e["data"]["current_phase"] == "executing" for e in streamed)
    assert all(ANSWER.startswith(e["data"]["partial"]) for e in streamed if e["data"]["step"] == 1)

    plans = (await api.http.get(f"/api/runs/{rid}/plans")).json()
    assert [(p["version"], p["status"]) for p in plans] == [(1, "revised"), (2, "approved")]
    assert plans[0]["decision"]["feedback"] == "fewer steps"

    names = {a["name"]: a for a in (await api.http.get(f"/api/runs/{rid}/artifacts")).json()}
    assert set(names) == {"result.md", "sources.json"}
    r = await api.http.get(f"/api/runs/{rid}/artifacts/result.md", headers={"Range": "bytes=0-20"})
    assert r.status_code == 206 and r.text == "# NATS in a paragraph"[:21]
    assert r.headers["content-range"] == f"bytes 0-20/{names['result.md']['size']}"
    sources = (await api.http.get(f"/api/runs/{rid}/artifacts/sources.json")).json()
    assert sources == [{"url": "https://docs.nats.io/nats-concepts", "cited_in_steps": [1]}]

    # Usage and cost: two plans (11 + 7 tokens each) and one step (50 + 25), at 3 and 15 USD per 1M.
    async def summary() -> dict[str, Any] | None:
        body = (await api.http.get(f"/api/metrics/run/{rid}/summary")).json()
        return body if "cost_usd" in body.get("metrics", {}) else None

    metrics = (await eventually(summary, what="the run's metrics"))["metrics"]
    assert metrics["tokens_prompt"]["last"] == 72 and metrics["tokens_completion"]["last"] == 39
    assert metrics["cost_usd"]["last"] == pytest.approx((72 * 3.0 + 39 * 15.0) / 1e6)

    # The key went to the model server, and nowhere else.
    assert {r.headers["authorization"] for r in model.chat_requests()} == {f"Bearer {KEY}"}
    logs = (await api.http.get(f"/api/runs/{rid}/logs", params={"limit": 1000})).text
    assert KEY not in logs and KEY not in agents_system.logs()


async def test_team_plugin_runs_end_to_end(api: Api, model: FakeOpenAI) -> None:
    reviews = iter(["REVISE: add a test", "APPROVE"])

    def respond(req: Request) -> Reply:
        if req.wants_plan:
            assert "planner of a small software team" in system_prompt(req)
            return Reply.plan("Write add()")
        if "reviewer" in system_prompt(req):
            return Reply.chat(next(reviews))
        if "The reviewer says" in req.user_text:
            return Reply.chat("def add(a, b): return a + b\n\ndef test_add(): assert add(1, 2) == 3")
        return Reply.chat("def add(a, b): return a + b")

    model.responder = respond
    task = await api.task(
        name="add two numbers", agent="team", require_approval=False, agent_config={"review_rounds": 2}
    )
    run = await api.run(task["id"])
    final = await api.wait_status(run["id"], *TERMINAL_STATUSES, timeout=30)
    assert final["status"] == "completed", final
    out = final["results"]["outputs"][0]
    assert out["reviews"] == ["REVISE: add a test", "APPROVE"] and "test_add" in out["output"]
    assert final["plan"]["team"] == ["planner", "coder", "reviewer"]
    r = await api.http.get(f"/api/runs/{run['id']}/artifacts/result.md")
    assert r.status_code == 200 and "> review: APPROVE" in r.text
    assert len(model.chat_requests()) == 5  # plan, draft, review, fix, review

    agents = {a["kind"]: a for a in (await api.http.get("/api/agents")).json()["items"]}
    assert {"scripted", "openai", "team"} <= set(agents)
    team = agents["team"]
    assert team["available"] and len(team["runners"]) == 1 and team["supports_resume"]
    assert "review_rounds" in json.dumps(team["config_schema"])
    assert team["total_runs"] >= 1 and team["success_rate"] == 1.0
    assert agents["openai"]["runners"][0]["max_concurrency"] == 1
    one = (await api.http.get("/api/agents/team")).json()
    assert one["kind"] == "team" and one["description"].startswith("A planner, a coder and a reviewer")


async def test_unserved_kind_is_refused_with_409(api: Api) -> None:
    task = await api.task(agent="crewai")
    r = await api.http.post("/api/runs", json={"task_id": task["id"]})
    assert r.status_code == 409
    assert r.json()["detail"] == (
        "no runner serves agent kind 'crewai'; kinds served now: openai, scripted, team"
    )


async def test_kind_limit_queues_runs_and_cancel_aborts_the_stream(api: Api, model: FakeOpenAI) -> None:
    def respond(req: Request) -> Reply:
        return Reply.plan("Talk") if req.wants_plan else Reply.drip(0.02)

    model.responder = respond
    task = await api.task(agent="openai", require_approval=False)
    first = await api.run(task["id"])
    second = await api.run(task["id"])

    async def streaming(run_id: str) -> bool:
        logs = await api.logs(run_id)
        return any(
            e["event_type"] == "progress" and e["data"].get("current_phase") == "executing" for e in logs
        )

    await eventually(lambda: streaming(first["id"]), what="the first run streaming")
    # The runner serves one openai run at a time: the second waits in the queue, untouched...
    assert (await api.get_run(second["id"]))["status"] == "pending"
    # ...while other kinds are not held up.
    quick = await api.task(require_approval=False, agent_config={"steps": 1, "step_delay_ms": 0})
    assert (await api.wait_status((await api.run(quick["id"]))["id"], "completed"))["status"] == "completed"
    assert (await api.get_run(second["id"]))["status"] == "pending"

    cancelled_at = time.monotonic()
    r = await api.http.post(f"/api/runs/{first['id']}/cancel", json={"reason": "enough"})
    assert r.status_code == 202
    await eventually(lambda: bool(model.disconnects), 5, "the model server sees the close")
    assert model.disconnects[0] - cancelled_at < 1.5, "the HTTP request was aborted at once"
    assert (await api.wait_status(first["id"], "cancelled"))["error_message"] == "cancelled: enough"

    # Its slot is free: the second run starts now.
    await eventually(lambda: streaming(second["id"]), what="the second run streaming")
    await api.http.post(f"/api/runs/{second['id']}/cancel")
    await api.wait_status(second["id"], "cancelled")
    first_done = (await api.get_run(first["id"]))["completed_at"]
    assert (await api.get_run(second["id"]))["started_at"] >= first_done, "started in order"


def readme_responder(req: Request) -> Reply:
    if req.wants_plan:
        if "one step is enough" in req.user_text:
            return Reply.plan("Explain subjects and streams", usage=(120, 30))
        return Reply.plan("Explain subjects", "Explain streams", usage=(100, 40))
    return Reply.chat(ANSWER, usage=(300, 60), chunk_chars=12, delay_s=0.05)


def test_readme_agents_section_runs_as_written(
    agents_system: System, model: FakeOpenAI, tmp_path: Path
) -> None:
    model.reset()
    model.responder = readme_responder
    section = (ROOT / "README.md").read_text().split("\n## Agents\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    port = agents_system.base_url.rsplit(":", 1)[1]
    marker = "=== next block ==="
    script = "set -euo pipefail\n" + f"\necho '{marker}'\n".join(blocks).replace(
        "localhost:8000", f"localhost:{port}"
    )
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "AGENTBUS_WS": agents_system.ws_url}
    out = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    print(out.stdout)  # what the README shows, when run with -s
    first, second, third = (b.strip().splitlines() for b in out.stdout.split(marker))

    def events(lines: list[str]) -> list[tuple[str, dict[str, Any]]]:
        return [
            (m.group(1), json.loads(m.group(2)))
            for m in map(re.compile(r"^\d+ ([a-z_]+) (.*)$").match, lines)
            if m
        ]

    plan1 = events(first)
    assert [t for t, _ in plan1 if t != "progress"] == ["analysis_start", "plan_ready", "approval_required"]
    assert plan1[-1][1]["version"] == 1 and len(plan1[-1][1]["plan"]["steps"]) == 2
    revised = events(second)
    assert [t for t, _ in revised if t != "progress"] == [
        "revision_requested",
        "plan_ready",
        "approval_required",
    ]
    assert revised[-1][1]["version"] == 2
    plans = json.loads(second[-1])
    assert [(p["version"], p["status"]) for p in plans] == [(1, "revised"), (2, "pending")]
    done = events(third)
    assert [t for t, _ in done if t != "progress"] == ["approved", "artifact", "artifact", "completion"]
    streamed = [d for t, d in done if t == "progress" and "partial" in d]
    assert streamed and all(ANSWER.startswith(d["partial"]) for d in streamed)
    rest = third[len(done) :]
    assert {a["name"] for a in json.loads(rest[0])} == {"result.md", "sources.json"}
    assert "\n".join(rest[1:-2]) == "# NATS in one paragraph\n\n## 1. Explain subjects and streams\n\nSub"
    metrics = json.loads(rest[-2])["metrics"]
    assert metrics["tokens_prompt"]["last"] == 520 and metrics["tokens_completion"]["last"] == 130
    assert metrics["cost_usd"]["last"] == pytest.approx((520 * 3.0 + 130 * 15.0) / 1e6)
    kind, available, runners, total, rate = rest[-1].split()
    assert 0 <= float(rate) <= 1
    assert (kind, available, runners) == ("openai", "True", "1") and int(total) >= 1

"""The gateway's side of issue 4, in-process against a real nats-server and both databases.

Agent registry and the 409 for unserved kinds, plan revisions and GET /plans,
artifacts streamed with range support, max_revision_rounds on tasks. No runner
runs here: events are published as a runner would, discovery is answered by a
fake runner (tests/support/fake_runner.py).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from nats.js.errors import ObjectNotFoundError

from agentbus.contracts import RunControl, subjects
from agentbus.contracts import events as ev
from tests.integration import test_gateway as gw
from tests.support.fake_runner import FakeRunnerInfo
from tests.support.waiting import eventually

# The gateway tests' JetStream fixture (their broker, fake runner and app are in conftest.py).
js = gw.js
Emitter, new_task, new_run = gw.Emitter, gw.new_task, gw.new_run


async def test_max_revision_rounds_on_tasks_and_runs(client: AsyncTestClient) -> None:
    task = await new_task(client)
    assert task["max_revision_rounds"] == 2
    assert (await new_task(client, max_revision_rounds=0))["max_revision_rounds"] == 0
    for bad in (-1, 11, "two"):
        r = await client.post("/api/tasks", json={"name": "t", "max_revision_rounds": bad})
        assert r.status_code == 400, r.text
    r = await client.patch(f"/api/tasks/{task['id']}", json={"max_revision_rounds": 5})
    assert r.status_code == 200 and r.json()["max_revision_rounds"] == 5
    run = await new_run(client, task["id"])
    assert run["max_revision_rounds"] == 5


async def test_unserved_agent_kind_is_refused_with_409(
    client: AsyncTestClient, runner_info: FakeRunnerInfo
) -> None:
    task = await new_task(client, agent="crew")
    began = time.monotonic()
    r = await client.post("/api/runs", json={"task_id": task["id"]})
    assert r.status_code == 409
    assert r.json() == {
        "status_code": 409,
        "detail": "no runner serves agent kind 'crew'; kinds served now: scripted",
    }
    assert time.monotonic() - began < 3
    page = (await client.get(f"/api/runs?task_id={task['id']}")).json()
    assert page["total"] == 0, "nothing stored, nothing queued"
    # A runner that starts serving the kind is found on the next miss.
    runner_info.kinds.append("crew")
    try:
        assert (await client.post("/api/runs", json={"task_id": task["id"]})).status_code == 201
    finally:
        runner_info.kinds.remove("crew")


async def test_agent_registry_lists_kinds_runners_and_run_record(client: AsyncTestClient, js) -> None:  # type: ignore[no-untyped-def]
    task = await new_task(client)
    done = await new_run(client, task["id"], require_approval=False)
    await new_run(client, task["id"])
    e = Emitter(js, task["id"], done["id"])
    await e.emit(ev.AnalysisStart)
    await e.emit(ev.Completion, data=ev.CompletionData(results={}, duration=0.1))
    await eventually(lambda: _status(client, done["id"], "completed"), what="the run completed")

    r = await client.get("/api/agents")
    assert r.status_code == 200, r.text
    page = r.json()
    kinds = {a["kind"]: a for a in page["items"]}
    assert page["total"] == len(page["items"]) and "scripted" in kinds
    scripted = kinds["scripted"]
    assert scripted["available"] is True and scripted["description"] == "scripted agent"
    assert [x["instance"] for x in scripted["runners"]] == ["fake-runner"]
    assert scripted["total_runs"] >= 2 and scripted["finished_runs"] >= 1
    assert 0 < scripted["success_rate"] <= 1
    one = (await client.get("/api/agents/scripted/")).json()
    assert one["kind"] == "scripted" and one["runners"] == scripted["runners"]
    missing = await client.get("/api/agents/nothing-like-it")
    assert missing.status_code == 404 and "nothing-like-it" in missing.json()["detail"]


async def _status(client: AsyncTestClient, run_id: str, status: str) -> bool:
    return (await client.get(f"/api/runs/{run_id}")).json()["status"] == status


async def _decision(js: Any, run_id: str) -> RunControl:
    kv = await js.key_value(subjects.RUN_STATE_BUCKET)
    return msgspec.json.decode((await kv.get(subjects.decision_key(run_id))).value, type=RunControl)


async def test_revise_sends_the_plan_back_and_every_version_is_kept(client: AsyncTestClient, js) -> None:  # type: ignore[no-untyped-def]
    task = await new_task(client, max_revision_rounds=1)
    run = await new_run(client, task["id"])
    rid = run["id"]
    e = Emitter(js, task["id"], rid)
    v1, v2 = {"steps": ["a", "b"]}, {"steps": ["a"]}
    await e.emit(ev.AnalysisStart)
    await e.emit(ev.PlanReady, data=ev.PlanData(plan=v1))
    await e.emit(ev.ApprovalRequired, data=ev.ApprovalRequiredData(plan=v1, timeout_s=300))
    await eventually(lambda: _status(client, rid, "awaiting_approval"), what="the run awaiting approval")

    bad = await client.post(f"/api/runs/{rid}/approve", json={"approved": True, "revise": True})
    assert bad.status_code == 400 and "approved: false" in bad.json()["detail"]
    r = await client.post(
        f"/api/runs/{rid}/approve", json={"approved": False, "feedback": "fewer steps", "revise": True}
    )
    assert r.status_code == 200, r.text
    approval = r.json()["approval"]
    assert approval["revise"] is True and approval["plan_version"] == 1 and approval["approved"] is False
    ctl = await _decision(js, rid)
    assert (ctl.kind, ctl.revise, ctl.plan_version, ctl.feedback) == ("reject", True, 1, "fewer steps")
    again = await client.post(f"/api/runs/{rid}/approve", json={"approved": True})
    assert again.status_code == 409 and "already decided" in again.json()["detail"]

    # The runner's answer: version 2 and a new wait. The run is undecided again.
    await e.emit(ev.RevisionRequested, data=ev.RevisionData(version=1, round=1, feedback="fewer steps"))
    await e.emit(ev.PlanReady, data=ev.PlanData(plan=v2, version=2))
    await e.emit(ev.ApprovalRequired, data=ev.ApprovalRequiredData(plan=v2, timeout_s=300, version=2))

    async def waiting_again() -> bool:
        got = (await client.get(f"/api/runs/{rid}")).json()
        return got["status"] == "awaiting_approval" and got["approval"] is None and got["plan"] == v2

    await eventually(waiting_again)
    over = await client.post(f"/api/runs/{rid}/approve", json={"approved": False, "revise": True})
    assert over.status_code == 409 and "no revision rounds left" in over.json()["detail"]
    r = await client.post(f"/api/runs/{rid}/approve", json={"approved": True, "feedback": "good"})
    assert r.status_code == 200 and r.json()["approval"]["plan_version"] == 2
    assert (await _decision(js, rid)).plan_version == 2

    plans = (await client.get(f"/api/runs/{rid}/plans")).json()
    assert [(p["version"], p["plan"], p["status"]) for p in plans] == [(1, v1, "revised"), (2, v2, "pending")]
    assert plans[0]["decision"]["feedback"] == "fewer steps" and plans[0]["decision"]["revise"] is True
    await e.emit(ev.Approved, data=ev.DecisionData(feedback="good"))

    async def approved() -> Any:
        got = (await client.get(f"/api/runs/{rid}/plans/")).json()
        return got if got[1]["status"] == "approved" else None

    plans = await eventually(approved)
    assert plans[1]["decision"]["approved"] is True and plans[1]["decision"]["feedback"] == "good"
    assert (await client.get("/api/runs/nope/plans")).status_code == 404


async def _artifact(client: AsyncTestClient, js, data: bytes, name: str, content_type: str) -> str:  # type: ignore[no-untyped-def]
    task = await new_task(client)
    run = await new_run(client, task["id"])
    store = await js.object_store(subjects.ARTIFACTS_BUCKET)
    await store.put(f"{run['id']}/{name}", data)
    e = Emitter(js, task["id"], run["id"])
    await e.emit(
        ev.ArtifactCreated, data=ev.ArtifactData(name=name, size=len(data), content_type=content_type)
    )

    async def listed() -> Any:
        return (await client.get(f"/api/runs/{run['id']}/artifacts")).json()

    await eventually(listed)
    return run["id"]


async def test_artifacts_are_streamed_with_range_support(client: AsyncTestClient, js) -> None:  # type: ignore[no-untyped-def]
    # Larger than one object-store chunk (128 KiB), so ranges cross chunk boundaries.
    data = bytes(range(256)) * 1200  # 307200 bytes
    rid = await _artifact(client, js, data, "shot.png", "image/png")
    url = f"/api/runs/{rid}/artifacts/shot.png"
    r = await client.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "image/png" and r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-length"] == str(len(data))

    cases = {
        "bytes=0-9": (0, 9),
        "bytes=131000-131100": (131000, 131100),  # across the first chunk boundary
        "bytes=300000-": (300000, len(data) - 1),
        "bytes=-5": (len(data) - 5, len(data) - 1),
        "bytes=307190-999999": (307190, len(data) - 1),
    }
    for header, (first, last) in cases.items():
        r = await client.get(url, headers={"Range": header})
        assert r.status_code == 206, (header, r.text)
        assert r.content == data[first : last + 1], header
        assert r.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
        assert r.headers["content-length"] == str(last - first + 1)
    for header in ("bytes=307200-", "bytes=-0"):
        r = await client.get(url, headers={"Range": header})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
        assert r.json()["status_code"] == 416 and "outside" in r.json()["detail"]
    for ignored in ("bytes=0-1,5-6", "items=0-5", "bytes=9-2"):
        r = await client.get(url, headers={"Range": ignored})
        assert r.status_code == 200 and len(r.content) == len(data), ignored


async def test_artifacts_go_with_their_task(client: AsyncTestClient, js) -> None:  # type: ignore[no-untyped-def]
    rid = await _artifact(client, js, b"# notes\n", "notes.md", "text/markdown")
    r = await client.get(f"/api/runs/{rid}/artifacts/notes.md")
    assert r.content == b"# notes\n" and r.headers["content-type"].startswith("text/markdown")
    task_id = (await client.get(f"/api/runs/{rid}")).json()["task_id"]
    assert (await client.delete(f"/api/tasks/{task_id}")).status_code == 204
    store = await js.object_store(subjects.ARTIFACTS_BUCKET)
    with pytest.raises(ObjectNotFoundError):
        await store.get(f"{rid}/notes.md")


async def test_a_rewritten_artifact_is_indexed_anew(client: AsyncTestClient, js) -> None:  # type: ignore[no-untyped-def]
    rid = await _artifact(client, js, b"first", "out.txt", "text/plain")
    run = (await client.get(f"/api/runs/{rid}")).json()
    store = await js.object_store(subjects.ARTIFACTS_BUCKET)
    await store.put(f"{rid}/out.txt", b"second, longer")
    e = Emitter(js, run["task_id"], rid)
    e.seq = run["last_seq"]
    await e.emit(
        ev.ArtifactCreated, data=ev.ArtifactData(name="out.txt", size=14, content_type="text/markdown")
    )

    async def updated() -> Any:
        items = (await client.get(f"/api/runs/{rid}/artifacts")).json()
        return items if items[0]["size"] == 14 else None

    [item] = await eventually(updated)
    assert item["content_type"] == "text/markdown"
    r = await client.get(f"/api/runs/{rid}/artifacts/out.txt")
    assert r.content == b"second, longer" and r.headers["content-type"].startswith("text/markdown")

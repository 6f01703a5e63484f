"""A user's view: every run flow over HTTP and WebSocket against the real processes."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import msgspec
import nats
import pytest

from agentbus.contracts import encode, subjects
from agentbus.contracts import events as ev
from tests.support.client import TERMINAL, Api, assert_gapless, events_until, next_event
from tests.support.system import System
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

FAST = {"steps": 2, "step_delay_ms": 20}
TERMINAL_STATUSES = ("completed", "failed", "rejected", "cancelled", "timeout")


async def test_ready_when_every_service_answers(api: Api) -> None:
    r = await api.http.get("/ready")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"broker": True, "database": True, "runner": True, "metrics": True}


async def test_approval_flow_read_your_events(api: Api) -> None:
    task = await api.task(agent_config=FAST)
    run = await api.run(task["id"])
    async with api.ws(f"/ws/runs/{run['id']}?since=0") as ws:
        seen = await events_until(ws, lambda e: e["event_type"] == "approval_required")
        # docs/api.md's read-your-events rule: the state already shows what the stream said.
        state = await api.get_run(run["id"])
        assert state["status"] == "awaiting_approval" and state["plan"] == {"steps": ["Step 1", "Step 2"]}
        r = await api.http.post(f"/api/runs/{run['id']}/approve", json={"approved": True, "feedback": "lgtm"})
        assert r.status_code == 200, r.text
        seen += await events_until(ws, lambda e: e["event_type"] in TERMINAL)
    types = [e["event_type"] for e in seen]
    assert types == [
        "analysis_start",
        "plan_ready",
        "approval_required",
        "approved",
        "progress",
        "progress",
        "completion",
    ]
    assert_gapless(seen)
    assert seen[1]["data"]["plan"]["steps"] == ["Step 1", "Step 2"]
    assert seen[2]["data"]["timeout_s"] == 300
    assert seen[3]["data"]["feedback"] == "lgtm"
    assert seen[5]["data"]["progress_percent"] == 100
    final = await api.wait_status(run["id"], "completed")
    assert final["progress"] == 100 and final["approval"]["approved"] is True
    assert final["duration"] > 0 and final["completed_at"] >= final["started_at"]
    logs = await api.logs(run["id"])
    assert logs == seen, "the stored log is exactly what the stream delivered"


async def test_reject_ends_the_run_without_executing(api: Api) -> None:
    task = await api.task(agent_config=FAST)
    run = await api.run(task["id"])
    await api.wait_status(run["id"], "awaiting_approval")
    r = await api.http.post(f"/api/runs/{run['id']}/approve", json={"approved": False, "feedback": "no"})
    assert r.status_code == 200
    final = await api.wait_status(run["id"], "rejected")
    assert final["approval"]["approved"] is False and final["approval"]["feedback"] == "no"
    types = [e["event_type"] for e in await api.logs(run["id"])]
    assert types == ["analysis_start", "plan_ready", "approval_required", "rejected"]


async def test_no_approval_runs_straight_through(api: Api) -> None:
    task = await api.task(require_approval=False, agent_config={"steps": 3, "step_delay_ms": 0})
    run = await api.run(task["id"])
    final = await api.wait_status(run["id"], "completed")
    assert final["approval"] is None
    types = [e["event_type"] for e in await api.logs(run["id"])]
    assert types == ["analysis_start", "plan_ready", "progress", "progress", "progress", "completion"]

    # A run can override the task's approval setting.
    held = await api.run(task["id"], require_approval=True)
    await api.wait_status(held["id"], "awaiting_approval")
    await api.http.post(f"/api/runs/{held['id']}/cancel")
    await api.wait_status(held["id"], "cancelled")


async def test_agent_failure_is_reported(api: Api) -> None:
    task = await api.task(
        require_approval=False, agent_config={"steps": 3, "step_delay_ms": 0, "fail_at_step": 2}
    )
    run = await api.run(task["id"])
    final = await api.wait_status(run["id"], "failed")
    assert "step 2" in final["error_message"].lower()
    events = await api.logs(run["id"])
    assert [e["event_type"] for e in events][-1] == "failure"
    assert [e["event_type"] for e in events].count("progress") == 1
    t = (await api.http.get(f"/api/tasks/{task['id']}")).json()
    assert (t["total_runs"], t["failed_runs"], t["successful_runs"]) == (1, 1, 0)
    assert t["last_error"] == final["error_message"]


async def test_cancel_really_stops_the_agent(api: Api) -> None:
    task = await api.task(require_approval=False, agent_config={"steps": 100, "step_delay_ms": 50})
    run = await api.run(task["id"])
    async with api.ws(f"/ws/runs/{run['id']}?since=0") as ws:
        await events_until(ws, lambda e: e["event_type"] == "progress")
        r = await api.http.post(f"/api/runs/{run['id']}/cancel", json={"reason": "enough"})
        assert r.status_code == 202
        tail = await events_until(ws, lambda e: e["event_type"] in TERMINAL)
        assert tail[-1]["event_type"] == "cancelled" and tail[-1]["data"]["reason"] == "enough"
        # Nothing may follow `cancelled`: within ten step delays, a running agent would have emitted more.
        with pytest.raises(TimeoutError):
            await next_event(ws, timeout=0.5)
    final = await api.wait_status(run["id"], "cancelled")
    events = await api.logs(run["id"])
    assert events[-1]["event_type"] == "cancelled" and final["progress"] < 100
    assert (await api.http.post(f"/api/runs/{run['id']}/cancel")).status_code == 409


async def test_a_cancel_answered_202_is_honoured(api: Api) -> None:
    """Cancels sent 0-60 ms after approving a short run: each is either answered 409 because the run
    had already completed, or 202 and the run ends `cancelled`; never 202 and then completed."""
    task = await api.task(agent_config={"steps": 1, "step_delay_ms": 0})
    outcomes = []
    for i in range(8):
        run = await api.run(task["id"])
        await api.wait_status(run["id"], "awaiting_approval")
        r = await api.http.post(f"/api/runs/{run['id']}/approve", json={"approved": True})
        assert r.status_code == 200, r.text
        await asyncio.sleep(i * 0.008)  # the moment of the race (0 to 56 ms), not a wait for a condition
        r = await api.http.post(f"/api/runs/{run['id']}/cancel")
        assert r.status_code in (202, 409), r.text
        final = await api.wait_status(run["id"], *TERMINAL_STATUSES)
        expected = "cancelled" if r.status_code == 202 else "completed"
        assert final["status"] == expected, (r.status_code, r.text, final["status"])
        if r.status_code == 409:
            assert "completed" in r.json()["detail"]
        outcomes.append(r.status_code)
    print("cancel outcomes", outcomes)


async def test_approval_timeout_ends_the_run(api: Api) -> None:
    task = await api.task(approval_timeout_s=1, agent_config=FAST)
    run = await api.run(task["id"])
    final = await api.wait_status(run["id"], "timeout", timeout=15)
    last = (await api.logs(run["id"]))[-1]
    assert last["event_type"] == "timeout" and last["data"]["phase"] == "approval"
    assert "approval" in final["error_message"]
    r = await api.http.post(f"/api/runs/{run['id']}/approve", json={"approved": True})
    assert r.status_code == 409


async def test_execution_timeout_ends_the_run(api: Api) -> None:
    task = await api.task(
        require_approval=False, timeout_s=1, agent_config={"steps": 100, "step_delay_ms": 100}
    )
    run = await api.run(task["id"])
    await api.wait_status(run["id"], "timeout", timeout=15)
    last = (await api.logs(run["id"]))[-1]
    assert last["event_type"] == "timeout" and last["data"]["phase"] == "execution"


async def test_replay_with_since_then_live_without_gap_or_duplicate(api: Api) -> None:
    task = await api.task(agent_config={"steps": 4, "step_delay_ms": 0})
    run = await api.run(task["id"])
    await api.wait_status(run["id"], "awaiting_approval")
    # Join mid-run with since=1: replay 2..3, then live from the approval on.
    async with api.ws(f"/ws/runs/{run['id']}?since=1") as ws:
        first = await events_until(ws, lambda e: e["event_type"] == "approval_required")
        assert [e["seq"] for e in first] == [2, 3]
        await api.http.post(f"/api/runs/{run['id']}/approve", json={"approved": True})
        rest = await events_until(ws, lambda e: e["event_type"] in TERMINAL)
    seqs = [e["seq"] for e in first + rest]
    assert seqs == list(range(2, 2 + len(seqs)))
    # After the fact, a task stream with since replays every run of the task in order.
    second = await api.run(task["id"], require_approval=False)
    await api.wait_status(second["id"], "completed")
    async with api.ws(f"/ws/tasks/{task['id']}?since=0") as ws:
        total = len(await api.logs(run["id"])) + len(await api.logs(second["id"]))
        got = [await next_event(ws) for _ in range(total)]
    assert_gapless(got)
    assert {e["run_id"] for e in got} == {run["id"], second["id"]}
    async with api.ws(f"/ws/runs/{run['id']}?since=5") as ws:
        replayed = await events_until(ws, lambda e: e["event_type"] in TERMINAL)
        assert replayed[0]["seq"] == 6


async def test_global_stream_sees_two_concurrent_runs(api: Api) -> None:
    task = await api.task(require_approval=False, agent_config={"steps": 3, "step_delay_ms": 30})
    async with api.ws("/ws/stream") as ws:
        runs = [await api.run(task["id"]), await api.run(task["id"])]
        ids = {r["id"] for r in runs}
        mine: list[dict] = []
        done: set[str] = set()
        while done != ids:
            e = await next_event(ws)
            if e["run_id"] in ids:
                mine.append(e)
                if e["event_type"] in TERMINAL:
                    done.add(e["run_id"])
    assert_gapless(mine)
    assert {e["run_id"] for e in mine} == ids
    for rid in ids:
        assert [e["event_type"] for e in mine if e["run_id"] == rid][-1] == "completion"


async def test_heartbeats_on_a_quiet_stream(api: Api) -> None:
    task = await api.task()
    async with api.ws(f"/ws/tasks/{task['id']}") as ws:
        frame = await next_event(ws, timeout=5, heartbeats=True)
    assert frame["event_type"] == "heartbeat" and frame["timestamp"].endswith("Z")


async def test_unknown_stream_target_is_closed(api: Api) -> None:
    async with api.ws("/ws/runs/does-not-exist") as ws:
        with pytest.raises(Exception) as info:
            await next_event(ws, timeout=5)
    assert getattr(info.value, "rcvd", None) is not None and info.value.rcvd.code == 4404


async def test_metrics_summaries_over_two_runs(api: Api) -> None:
    task = await api.task(require_approval=False, agent_config={"steps": 2, "step_delay_ms": 0})
    runs = [
        await api.run(task["id"]),
        await api.run(task["id"], agent_config={"steps": 4, "step_delay_ms": 0}),
    ]
    for r in runs:
        await api.wait_status(r["id"], "completed")

    async def summary() -> dict | None:
        r = await api.http.get(f"/api/metrics/task/{task['id']}/summary")
        body = r.json()
        return (
            body if r.status_code == 200 and body["metrics"].get("duration", {}).get("count") == 2 else None
        )

    body = await eventually(summary, what="task summary with both runs")
    assert body["task_id"] == task["id"]
    steps = body["metrics"]["steps"]
    assert (steps["count"], steps["min"], steps["max"], steps["avg"]) == (2, 2, 4, 3)
    assert {"duration", "steps", "tokens_prompt", "tokens_completion"} <= set(body["metrics"])
    run_summary = (await api.http.get(f"/api/metrics/run/{runs[1]['id']}/summary")).json()
    assert run_summary["run_id"] == runs[1]["id"] and run_summary["metrics"]["steps"]["last"] == 4
    page = (await api.http.get("/api/metrics", params={"task_id": task["id"], "name": "steps"})).json()
    assert page["total"] == 2 and {m["value"] for m in page["items"]} == {2, 4}
    one = page["items"][0]
    got = (await api.http.get(f"/api/metrics/{one['id']}")).json()
    assert got == one and got["metric_type"] == "counter"
    assert (await api.http.get("/api/metrics/nope")).status_code == 404

    # Deleting the task takes its metrics with it.
    assert (await api.http.delete(f"/api/tasks/{task['id']}")).status_code == 204

    async def gone() -> bool:
        body = (await api.http.get(f"/api/metrics/task/{task['id']}/summary")).json()
        return body["metric_count"] == 0

    await eventually(gone, what="metrics deleted with the task")
    assert (await api.http.get(f"/api/runs/{runs[0]['id']}")).status_code == 404


async def test_hundred_concurrent_runs_all_complete(api: Api) -> None:
    task = await api.task(require_approval=False, agent_config={"steps": 2, "step_delay_ms": 10})
    runs = await asyncio.gather(*(api.run(task["id"]) for _ in range(100)))
    assert sorted(r["run_number"] for r in runs) == list(range(1, 101))

    async def all_done() -> dict | None:
        t = (await api.http.get(f"/api/tasks/{task['id']}")).json()
        return t if t["total_runs"] == 100 else None

    t = await eventually(all_done, timeout=120, what="100 runs finished")
    assert t["successful_runs"] == 100 and t["success_rate"] == 1.0
    page = (
        await api.http.get("/api/runs", params={"task_id": task["id"], "status": "completed", "limit": 100})
    ).json()
    assert page["total"] == 100
    sample = await api.logs(runs[57]["id"])
    assert [e["seq"] for e in sample] == list(range(1, len(sample) + 1))
    assert json.dumps(sample[-1]["data"]["results"])  # results are stored as JSON


async def test_an_idle_connection_outlives_client_pool_timeouts(system: System) -> None:
    # uvicorn's default (5 s) closes an idle connection the moment a pooled client may reuse it;
    # the gateway keeps it for GATEWAY_KEEPALIVE_S (120 s). The same socket, idle for 6 s, still works.
    host, port = system.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    try:
        for idle in (6, 0):
            writer.write(request)
            status = await asyncio.wait_for(reader.readline(), 5)
            assert status.startswith(b"HTTP/1.1 200"), status
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            await asyncio.sleep(idle)  # the idleness under test: longer than uvicorn's default keep-alive
    finally:
        writer.close()


@pytest.mark.parametrize("same_message_id", [True, False], ids=["same-msg-id", "no-msg-id"])
async def test_an_event_its_runner_did_not_publish_does_not_wedge_the_run(
    api: Api, system: System, same_message_id: bool
) -> None:
    """Something on the bus publishes the run's next seq before its runner does (with the runner's
    message id, which makes JetStream drop the runner's own event as its duplicate, or with none).
    The conflicting duplicate is dead-lettered, the stored log keeps the runner's events, and the
    run completes."""
    task = await api.task(require_approval=False, agent_config={"steps": 3, "step_delay_ms": 400})
    run = await api.run(task["id"])
    # A runner gone astray (the broker lets only a runner, or the gateway, publish run events).
    nc = await nats.connect(system.nats.url, **system.nats.login("runner"))
    operator = await nats.connect(system.nats.url, **system.nats.login("operator"))
    try:
        dead = await operator.subscribe(subjects.EVENTS_DEAD)
        await operator.flush()
        await nc.flush()
        async with api.ws(f"/ws/runs/{run['id']}?since=0") as ws:
            seen = await events_until(ws, lambda e: e["event_type"] == "progress")
        seq = seen[-1]["seq"] + 1  # the runner's next, due in 400 ms
        forged = ev.Progress(
            id="forger/1",
            seq=seq,
            timestamp=datetime.now(UTC),
            task_id=task["id"],
            run_id=run["id"],
            message="forged",
            data=ev.ProgressData(step=9, total_steps=9, progress_percent=100.0, current_phase="forged"),
        )
        headers = {"Nats-Msg-Id": subjects.event_msg_id(run["id"], seq)} if same_message_id else None
        await nc.jetstream().publish(
            subjects.run_event(task["id"], run["id"], "progress"), encode(forged), headers=headers
        )
        final = await api.wait_status(run["id"], *TERMINAL_STATUSES, timeout=20)
        assert final["status"] == "completed", final
        msg = await dead.next_msg(timeout=10)
        assert "conflicting duplicate" in msg.headers["Agentbus-Error"]
        assert msgspec.json.decode(msg.data)["id"] == "forger/1"
    finally:
        await nc.close()
        await operator.close()
    logs = await api.logs(run["id"])
    assert [e["seq"] for e in logs] == list(range(1, len(logs) + 1))
    assert not [e for e in logs if e["id"].startswith("forger/")]
    assert [e["event_type"] for e in logs][-1] == "completion"
    assert [e["data"]["step"] for e in logs if e["event_type"] == "progress"] == [1, 2, 3]

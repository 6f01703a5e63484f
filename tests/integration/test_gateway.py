"""The gateway alone, in-process, against a real nats-server and both databases.

No runner runs here: the tests publish run events to JetStream the way a
runner does and check what the gateway stores and answers.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import nats
import pytest
from litestar.testing import AsyncTestClient
from nats.js.errors import KeyNotFoundError, NotFoundError, ObjectNotFoundError
from sqlalchemy import update

from agentbus.common.db import make_engine
from agentbus.contracts import RunCheckpointHead, RunControl, RunWake, encode, subjects
from agentbus.contracts import events as ev
from agentbus.gateway.app import create_app
from agentbus.gateway.settings import Settings
from agentbus.gateway.store.tables import runs
from tests.integration.conftest import LOCAL
from tests.support.fake_runner import FakeRunnerInfo
from tests.support.servers import NatsServer
from tests.support.waiting import eventually


@pytest.fixture
async def js(own_nats: NatsServer):  # type: ignore[no-untyped-def]
    nc = await nats.connect(own_nats.url)
    yield nc.jetstream()
    await nc.drain()


class Emitter:
    """Publishes events for one run as a runner would (seq from 1, message id run_id:seq)."""

    def __init__(self, js, task_id: str, run_id: str) -> None:  # type: ignore[no-untyped-def]
        self.js, self.task_id, self.run_id, self.seq = js, task_id, run_id, 0

    async def emit(self, cls: type[ev.Event], seq: int | None = None, **data) -> ev.Event:  # type: ignore[no-untyped-def]
        if seq is None:
            self.seq += 1
            seq = self.seq
        fields = {"data": data["data"]} if "data" in data else {}
        event = cls(
            id=uuid.uuid4().hex,
            seq=seq,
            timestamp=datetime.now(UTC),
            task_id=self.task_id,
            run_id=self.run_id,
            **fields,
        )
        await self.js.publish(
            subjects.run_event(self.task_id, self.run_id, cls.__struct_config__.tag),
            encode(event),
            headers={"Nats-Msg-Id": subjects.event_msg_id(self.run_id, seq)},
        )
        return event


async def new_task(client: AsyncTestClient, **fields) -> dict:  # type: ignore[no-untyped-def]
    r = await client.post("/api/tasks", json={"name": "t", **fields})
    assert r.status_code == 201, r.text
    return r.json()


async def new_run(client: AsyncTestClient, task_id: str, **fields) -> dict:  # type: ignore[no-untyped-def]
    r = await client.post("/api/runs", json={"task_id": task_id, **fields})
    assert r.status_code == 201, r.text
    return r.json()


async def test_task_crud_paging_and_filters(client: AsyncTestClient) -> None:
    created = [await new_task(client, name=f"task {i}", require_approval=i % 2 == 0) for i in range(3)]
    assert created[0]["status"] == "pending" and created[0]["success_rate"] == 0.0
    assert created[0]["agent"] == "scripted" and created[0]["max_rounds"] == 5

    page = (await client.get("/api/tasks?limit=2")).json()
    assert page["limit"] == 2 and page["skip"] == 0 and len(page["items"]) == 2
    assert page["total"] >= 3
    assert (await client.get("/api/tasks/?skip=1&limit=1")).json()["skip"] == 1

    tid = created[1]["id"]
    r = await client.patch(f"/api/tasks/{tid}", json={"name": "renamed", "max_rounds": 7})
    assert r.status_code == 200 and r.json()["name"] == "renamed" and r.json()["max_rounds"] == 7
    assert (await client.get(f"/api/tasks/{tid}/")).json()["name"] == "renamed"

    assert (await client.delete(f"/api/tasks/{tid}")).status_code == 204
    assert (await client.get(f"/api/tasks/{tid}")).status_code == 404
    assert (await client.delete(f"/api/tasks/{tid}")).status_code == 404
    assert (await client.patch(f"/api/tasks/{tid}", json={"name": "x"})).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x" * 201},
        {"name": 5},
        {"name": "ok", "approval_timeout_s": 0},
        {"name": "ok", "approval_timeout_s": 86401},
        {"name": "ok", "timeout_s": 604801},
        {"name": "ok", "max_rounds": 101},
        {"name": "ok", "require_approval": "yes"},
        {"name": "ok", "config": [1]},
        {"name": "ok", "unknown_field": 1},
        ["not", "an", "object"],
    ],
)
async def test_bad_task_input_is_a_4xx_with_detail(client: AsyncTestClient, body: object) -> None:
    r = await client.post("/api/tasks", json=body)
    assert r.status_code in (400, 422), r.text
    assert r.json()["status_code"] == r.status_code and r.json()["detail"]


async def test_bad_json_query_and_size_limits(client: AsyncTestClient) -> None:
    r = await client.post("/api/tasks", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "detail" in r.json()
    for query in ("limit=101", "limit=0", "skip=-1", "status=bogus", "limit=abc"):
        r = await client.get(f"/api/tasks?{query}")
        assert r.status_code == 400, query
        assert r.json()["detail"]
    r = await client.post(
        "/api/tasks",
        content=b'{"name": "' + b"x" * 70_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["status_code"] == 413
    r = await client.post("/api/runs", json={"task_id": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]


async def test_create_run_queues_a_start_command(client: AsyncTestClient, js) -> None:  # type: ignore[no-untyped-def]
    task = await new_task(client, agent_config={"steps": 2}, approval_timeout_s=42)
    run = await new_run(client, task["id"], require_approval=False, labels={"team": "a"})
    assert run["status"] == "pending" and run["run_number"] == 1 and run["labels"] == {"team": "a"}
    second = await new_run(client, task["id"])
    assert second["run_number"] == 2 and second["require_approval"] is True

    msg = await js.get_last_msg(subjects.RUN_COMMANDS_STREAM, subjects.run_start("scripted"))
    cmd = msgspec.json.decode(msg.data)
    assert cmd["run_id"] == second["id"] and cmd["approval_timeout_s"] == 42
    assert cmd["agent_config"] == {"steps": 2}
    kv = await js.key_value(subjects.RUN_STATE_BUCKET)  # the record runners check a start against
    assert (await kv.get(subjects.start_key(second["id"]))).value == msg.data

    assert (await client.get(f"/api/tasks/{task['id']}")).json()["last_run_at"] is not None
    page = (await client.get(f"/api/runs?task_id={task['id']}")).json()
    assert page["total"] == 2 and [r["run_number"] for r in page["items"]] == [2, 1]
    assert (await client.get(f"/api/runs?task_id={task['id']}&status=completed")).json()["total"] == 0
    assert (await client.get("/api/runs?status=nope")).status_code == 400

    r = await client.patch(f"/api/runs/{run['id']}", json={"labels": {"x": "y"}})
    assert r.status_code == 200 and r.json()["labels"] == {"x": "y"}
    r = await client.patch(f"/api/runs/{run['id']}", json={"status": "completed"})
    assert r.status_code == 400, "a run's status can never be forced"


async def test_events_are_stored_applied_and_deduplicated(client: AsyncTestClient, js) -> None:  # type: ignore[no-untyped-def]
    task = await new_task(client)
    run = await new_run(client, task["id"])
    e = Emitter(js, task["id"], run["id"])
    await e.emit(ev.AnalysisStart)
    await e.emit(ev.PlanReady, data=ev.PlanData(plan={"steps": ["a", "b"]}))
    await e.emit(ev.ApprovalRequired, data=ev.ApprovalRequiredData(plan={"steps": ["a", "b"]}, timeout_s=300))

    async def awaiting():  # type: ignore[no-untyped-def]
        r = (await client.get(f"/api/runs/{run['id']}")).json()
        return r if r["status"] == "awaiting_approval" else None

    waiting = await eventually(awaiting)
    assert waiting["plan"] == {"steps": ["a", "b"]} and waiting["started_at"] is not None

    r = await client.post(f"/api/runs/{run['id']}/approve", json={"approved": True, "feedback": "go"})
    assert r.status_code == 200, r.text
    assert r.json()["approval"]["approved"] is True and r.json()["approval"]["feedback"] == "go"
    again = await client.post(f"/api/runs/{run['id']}/approve", json={"approved": False})
    assert again.status_code == 409 and "already decided" in again.json()["detail"]

    kv = await js.key_value(subjects.RUN_STATE_BUCKET)
    stored = msgspec.json.decode((await kv.get(subjects.decision_key(run["id"]))).value, type=RunControl)
    assert stored.kind == "approve" and stored.feedback == "go"

    await e.emit(ev.Approved, data=ev.DecisionData(feedback="go"))
    await e.emit(
        ev.Progress, data=ev.ProgressData(step=1, total_steps=2, progress_percent=50, current_phase="x")
    )
    # A redelivery with another message id must not store or count anything twice.
    await e.emit(
        ev.Progress,
        seq=5,
        data=ev.ProgressData(step=1, total_steps=2, progress_percent=50, current_phase="x"),
    )
    await e.emit(
        ev.Completion,
        seq=6,
        data=ev.CompletionData(
            results={"ok": True}, duration=1.25, stats=ev.RunStats(duration=1.25, steps=2)
        ),
    )
    await e.emit(ev.Completion, seq=6, data=ev.CompletionData(results={"ok": True}, duration=1.25))

    async def done():  # type: ignore[no-untyped-def]
        r = (await client.get(f"/api/runs/{run['id']}")).json()
        return r if r["status"] == "completed" else None

    final = await eventually(done)
    assert final["progress"] == 100 and final["results"] == {"ok": True} and final["duration"] == 1.25
    logs = (await client.get(f"/api/runs/{run['id']}/logs")).json()
    assert [i["seq"] for i in logs["items"]] == [1, 2, 3, 4, 5, 6] and logs["total"] == 6
    assert [i["event_type"] for i in logs["items"]][-1] == "completion"
    tail = (await client.get(f"/api/runs/{run['id']}/logs?since=4&limit=1")).json()
    assert [i["seq"] for i in tail["items"]] == [5] and tail["total"] == 2
    assert (await client.get(f"/api/runs/{run['id']}/logs?limit=1001")).status_code == 400

    t = (await client.get(f"/api/tasks/{task['id']}")).json()
    assert (t["total_runs"], t["successful_runs"], t["failed_runs"], t["success_rate"]) == (1, 1, 0, 1.0)
    assert t["status"] == "completed" and t["last_run_duration"] == 1.25

    # A late event never moves a terminal run.
    await e.emit(ev.Failure, seq=7, data=ev.FailureData(error="late"))
    await e.emit(ev.Cancelled, seq=8, data=ev.CancelledData(reason="marker"))
    await eventually(lambda: _log_count(client, run["id"], 8), what="8 events stored")
    assert (await client.get(f"/api/runs/{run['id']}")).json()["status"] == "completed"
    assert (await client.get(f"/api/tasks/{task['id']}")).json()["total_runs"] == 1

    assert (await client.post(f"/api/runs/{run['id']}/cancel")).status_code == 409
    assert (await client.post(f"/api/runs/{run['id']}/approve", json={"approved": True})).status_code == 409


async def _log_count(client: AsyncTestClient, run_id: str, n: int) -> bool:
    return (await client.get(f"/api/runs/{run_id}/logs")).json()["total"] == n


async def test_approve_needs_a_waiting_run_and_a_valid_body(client: AsyncTestClient) -> None:
    task = await new_task(client)
    run = await new_run(client, task["id"])
    r = await client.post(f"/api/runs/{run['id']}/approve", json={"approved": True})
    assert r.status_code == 409 and "pending" in r.json()["detail"]
    assert (await client.post(f"/api/runs/{run['id']}/approve", json={})).status_code == 400
    assert (await client.post(f"/api/runs/{run['id']}/approve", json={"approved": "y"})).status_code == 400
    assert (await client.post("/api/runs/missing/approve", json={"approved": True})).status_code == 404


async def test_cancel_stores_the_decision(client: AsyncTestClient, js) -> None:  # type: ignore[no-untyped-def]
    task = await new_task(client)
    run = await new_run(client, task["id"])
    r = await client.post(f"/api/runs/{run['id']}/cancel")
    assert r.status_code == 202 and r.json()["id"] == run["id"]
    kv = await js.key_value(subjects.RUN_STATE_BUCKET)
    stored = msgspec.json.decode((await kv.get(subjects.cancel_key(run["id"]))).value, type=RunControl)
    assert stored.kind == "cancel"
    r = await client.post(f"/api/runs/{run['id']}/cancel", json={"reason": "changed my mind"})
    assert r.status_code == 202


async def test_failed_and_timed_out_runs_count_as_failures(client: AsyncTestClient, js) -> None:  # type: ignore[no-untyped-def]
    task = await new_task(client)
    for cls, data in (
        (ev.Failure, ev.FailureData(error="boom")),
        (ev.Timeout, ev.TimeoutData(phase="approval")),
        (ev.Cancelled, ev.CancelledData(reason="user")),
    ):
        run = await new_run(client, task["id"])
        e = Emitter(js, task["id"], run["id"])
        await e.emit(ev.AnalysisStart)
        await e.emit(cls, data=data)

    async def counted():  # type: ignore[no-untyped-def]
        t = (await client.get(f"/api/tasks/{task['id']}")).json()
        return t if t["total_runs"] == 3 else None

    t = await eventually(counted)
    assert (t["successful_runs"], t["failed_runs"], t["success_rate"]) == (0, 2, 0.0)
    assert t["status"] == "cancelled" and t["last_error"] == "cancelled: user"
    runs = (await client.get(f"/api/runs?task_id={task['id']}&status=timeout")).json()
    assert runs["total"] == 1 and runs["items"][0]["error_message"] == "timed out while waiting for approval"


async def run_with_artifact(client: AsyncTestClient, js, name: str, data: bytes, content_type: str):  # type: ignore[no-untyped-def]
    """A new run whose runner stored one artifact (its bytes, then its `artifact` event)."""
    task = await new_task(client)
    run = await new_run(client, task["id"])
    store = await js.object_store(subjects.ARTIFACTS_BUCKET)
    await store.put(f"{run['id']}/{name}", data)
    e = Emitter(js, task["id"], run["id"])
    await e.emit(
        ev.ArtifactCreated, data=ev.ArtifactData(name=name, size=len(data), content_type=content_type)
    )
    return run, store, e


async def test_artifacts_index_and_download(client: AsyncTestClient, js) -> None:  # type: ignore[no-untyped-def]
    run, store, _ = await run_with_artifact(client, js, "result.json", b'{"answer": 42}', "application/json")

    async def listed():  # type: ignore[no-untyped-def]
        return (await client.get(f"/api/runs/{run['id']}/artifacts")).json()

    items = await eventually(listed)
    assert items[0]["name"] == "result.json" and items[0]["size"] == 14
    r = await client.get(f"/api/runs/{run['id']}/artifacts/result.json")
    assert r.status_code == 200 and r.content == b'{"answer": 42}'
    assert r.headers["content-type"].startswith("application/json")
    assert (await client.get(f"/api/runs/{run['id']}/artifacts/nope.txt")).status_code == 404

    assert (await client.delete(f"/api/runs/{run['id']}")).status_code == 204
    assert (await client.get(f"/api/runs/{run['id']}")).status_code == 404
    with pytest.raises(ObjectNotFoundError):
        await store.get(f"{run['id']}/result.json")


async def test_undecodable_event_does_not_stop_ingest(client: AsyncTestClient, js) -> None:  # type: ignore[no-untyped-def]
    task = await new_task(client)
    run = await new_run(client, task["id"])
    await js.publish(subjects.run_event(task["id"], run["id"], "progress"), b"garbage{")
    await js.publish(subjects.run_event(task["id"], run["id"], "progress"), b'{"event_type": "nope"}')
    await Emitter(js, task["id"], run["id"]).emit(ev.AnalysisStart)
    await eventually(lambda: _log_count(client, run["id"], 1), what="the good event stored")


async def test_unstorable_event_is_dead_lettered_and_others_are_stored(
    client: AsyncTestClient, js, database_url: str
) -> None:  # type: ignore[no-untyped-def]
    # PostgreSQL's jsonb refuses the NUL character: that completion can never be stored there.
    dead: list[bytes] = []

    async def on_dead(msg) -> None:  # type: ignore[no-untyped-def]
        dead.append(msg.data)

    sub = await js._nc.subscribe(subjects.EVENTS_DEAD, cb=on_dead)
    task = await new_task(client)
    bad, good = await new_run(client, task["id"]), await new_run(client, task["id"])
    bad_events, good_events = Emitter(js, task["id"], bad["id"]), Emitter(js, task["id"], good["id"])
    await bad_events.emit(ev.AnalysisStart)
    await bad_events.emit(ev.Completion, data=ev.CompletionData(results={"text": "a\x00b"}, duration=1.0))
    await good_events.emit(ev.AnalysisStart)
    await good_events.emit(ev.Completion, data=ev.CompletionData(results={"ok": True}, duration=1.0))
    await eventually(lambda: _log_count(client, good["id"], 2), what="the good run's 2 events stored")
    assert (await client.get(f"/api/runs/{good['id']}")).json()["status"] == "completed"
    if database_url.startswith("postgresql"):
        await eventually(lambda: len(dead) == 1, what="the unstorable event dead-lettered")
        assert msgspec.json.decode(dead[0])["run_id"] == bad["id"]
        assert (await client.get(f"/api/runs/{bad['id']}/logs")).json()["total"] == 1
    else:
        await eventually(lambda: _log_count(client, bad["id"], 2), what="the bad run's 2 events stored")
    await sub.unsubscribe()


async def test_metrics_endpoints_say_503_without_the_metrics_service(client: AsyncTestClient) -> None:
    r = await client.get("/api/metrics")
    assert r.status_code == 503 and "run.metrics.query" in r.json()["detail"]
    assert (await client.get("/api/metrics?limit=500")).status_code == 400
    assert (await client.get("/api/metrics?since=yesterday")).status_code == 400


async def test_health_ready_and_docs(client: AsyncTestClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["version"]
    r = await client.get("/ready")
    assert r.status_code == 503
    body = r.json()
    assert body["checks"]["broker"] and body["checks"]["database"]
    assert "runner" in body["detail"] and "metrics" in body["detail"]
    assert set(body["timings"]) == set(body["checks"]) and all(ms >= 0 for ms in body["timings"].values())
    spec = (await client.get("/openapi.json")).json()
    assert "/api/tasks" in spec["paths"] and "/api/runs/{run_id}/approve" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/redoc")).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "ok", "max_rounds": 101}, "max_rounds"),
        ({"name": "ok", "require_approval": "yes"}, "require_approval"),
        ({"name": 5}, "name"),
    ],
)
async def test_bad_task_input_names_the_field(client: AsyncTestClient, body: dict, field: str) -> None:
    r = await client.post("/api/tasks", json=body)
    assert r.status_code == 400, r.text
    assert [e["key"] for e in r.json()["extra"]] == [field]


async def test_a_stored_decision_the_bus_never_got_is_handed_over_again(
    own_nats: NatsServer,
    database_url: str,
    runner_info: FakeRunnerInfo,
    js,  # type: ignore[no-untyped-def]
) -> None:
    """The run's row is the outbox: a decision is stored first, then handed to the bus; one whose
    hand-over failed (the broker was away) is handed over by the reaper's next round."""
    settings = Settings(
        nats_url=own_nats.url, database_url=database_url, request_timeout_s=0.5, reaper_interval_s=0.2
    )
    async with AsyncTestClient(app=create_app(settings), base_url=LOCAL) as client:
        task = await new_task(client)
        run = await new_run(client, task["id"])
        e = Emitter(js, task["id"], run["id"])
        await e.emit(ev.AnalysisStart)
        await e.emit(ev.ApprovalRequired, data=ev.ApprovalRequiredData(plan={"steps": ["a"]}, timeout_s=300))

        async def awaiting() -> bool:
            return (await client.get(f"/api/runs/{run['id']}")).json()["status"] == "awaiting_approval"

        await eventually(awaiting)
        # Stored a minute ago, straight into the database, as if the bus had failed right after the
        # write: nothing in KV.
        decided = datetime.now(UTC) - timedelta(minutes=1)
        approval = {"approved": False, "feedback": "no", "decided_at": decided.isoformat(), "revise": False}
        engine = make_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    update(runs).where(runs.c.id == run["id"]).values(approval=approval, updated_at=decided)
                )
        finally:
            await engine.dispose()
        kv = await js.key_value(subjects.RUN_STATE_BUCKET)

        async def handed_over() -> RunControl | None:
            try:
                entry = await kv.get(subjects.decision_key(run["id"]))
            except KeyNotFoundError:
                return None
            return msgspec.json.decode(entry.value, type=RunControl)

        stored = await eventually(handed_over, what="the decision in KV")
        assert stored.kind == "reject" and stored.feedback == "no"
        assert (await client.get(f"/api/runs/{run['id']}")).json()["approval"]["feedback"] == "no"


def reaping_settings(own_nats: NatsServer, database_url: str) -> Settings:
    return Settings(
        nats_url=own_nats.url,
        database_url=database_url,
        request_timeout_s=0.5,
        reaper_after_s=0.5,
        reaper_interval_s=0.2,
    )


async def test_the_reaper_fences_an_unreadable_checkpoint(
    own_nats: NatsServer,
    database_url: str,
    runner_info: FakeRunnerInfo,
    js,  # type: ignore[no-untyped-def]
) -> None:
    """No runner holds the run and its checkpoint is garbage: fenced by revision all the same."""
    async with AsyncTestClient(
        app=create_app(reaping_settings(own_nats, database_url)), base_url=LOCAL
    ) as client:
        task = await new_task(client)
        run = await new_run(client, task["id"])
        e = Emitter(js, task["id"], run["id"])
        await e.emit(ev.AnalysisStart)
        kv = await js.key_value(subjects.RUN_STATE_BUCKET)
        await kv.put(subjects.state_key(run["id"]), b"\x00not a checkpoint")

        async def ended() -> dict | None:
            body = (await client.get(f"/api/runs/{run['id']}")).json()
            return body if body["status"] == "failed" else None

        body = await eventually(ended, what="the run reaped")
        assert "runner lost" in body["error_message"] and "checkpoint was unreadable" in body["error_message"]
        head = msgspec.json.decode(
            (await kv.get(subjects.state_key(run["id"]))).value, type=RunCheckpointHead
        )
        assert (head.phase, head.seq) == ("finished", 2)


async def test_a_parked_run_past_its_deadline_is_woken_then_ended(
    own_nats: NatsServer,
    database_url: str,
    runner_info: FakeRunnerInfo,
    js,  # type: ignore[no-untyped-def]
) -> None:
    """A parked run is held by no runner by design; when its deadline passes and no runner applies
    it, the reaper wakes it once more, and ends it if that goes unanswered too: as its policy says
    (the task's default, `timeout`; the others are in tests/integration/test_runner_policy.py)."""
    async with AsyncTestClient(
        app=create_app(reaping_settings(own_nats, database_url)), base_url=LOCAL
    ) as client:
        task = await new_task(client)
        run = await new_run(client, task["id"])
        e = Emitter(js, task["id"], run["id"])
        await e.emit(ev.AnalysisStart)
        await e.emit(ev.ApprovalRequired, data=ev.ApprovalRequiredData(plan={"steps": ["a"]}, timeout_s=0.2))

        async def woken() -> RunWake | None:
            try:
                msg = await js.get_last_msg(subjects.RUN_COMMANDS_STREAM, subjects.run_wake("scripted"))
            except NotFoundError:
                return None
            wake = msgspec.json.decode(msg.data, type=RunWake)
            return wake if wake.run_id == run["id"] else None

        wake = await eventually(woken, what="a deadline wake")
        assert wake.reason == "deadline" and wake.task_id == task["id"]

        async def ended() -> dict | None:
            body = (await client.get(f"/api/runs/{run['id']}")).json()
            return body if body["status"] == "timeout" else None

        body = await eventually(ended, what="the run ended")
        assert body["error_message"] == "timed out while waiting for approval"


@pytest.mark.parametrize(
    "path",
    [
        "/api/tasks?skip=9223372036854775808",
        "/api/runs?skip=9223372036854775808",
        "/api/runs/{run}/logs?since=99999999999999999999",
        "/api/runs/{run}/events?since=99999999999999999999",
    ],
)
async def test_integers_past_what_the_database_stores_are_a_400(client: AsyncTestClient, path: str) -> None:
    task = await new_task(client)
    run = await new_run(client, task["id"])
    r = await client.get(path.format(run=run["id"]))
    assert r.status_code == 400, r.text
    assert r.json()["status_code"] == 400 and r.json()["detail"]


async def test_huge_numbers_in_range_and_last_event_id_are_ignored_not_500(
    client: AsyncTestClient,
    js,  # type: ignore[no-untyped-def]
) -> None:
    run, _, e = await run_with_artifact(client, js, "out.txt", b"0123456789", "text/plain")
    await eventually(lambda: _log_count(client, run["id"], 1))
    r = await client.get(
        f"/api/runs/{run['id']}/artifacts/out.txt", headers={"Range": "bytes=" + "9" * 5000 + "-"}
    )
    assert r.status_code == 200 and r.content == b"0123456789"  # a malformed range is ignored
    await e.emit(ev.Failure, data=ev.FailureData(error="x"))  # ends the run: the SSE stream ends
    await eventually(lambda: _log_count(client, run["id"], 2))
    r = await client.get(f"/api/runs/{run['id']}/events", headers={"Last-Event-ID": "9" * 5000})
    assert r.status_code == 200 and "id: 1" in r.text  # not a seq of ours: from the start


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"[" * 1000 + b"]" * 1000, "application/json"),  # nested far deeper than any real body
        (b'{"name": "\xff\xfe"}', "application/json"),  # not UTF-8
        (b'{"name": "ok", "config": ' + b'{"a": ' * 2000 + b"1" + b"}" * 2000 + b"}", "application/json"),
    ],
    ids=["deep-array", "bad-utf8", "deep-config"],
)
async def test_hostile_bodies_are_a_4xx(client: AsyncTestClient, body: bytes, content_type: str) -> None:
    r = await client.post("/api/tasks", content=body, headers={"content-type": content_type})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.json()["detail"]


async def test_a_run_too_large_for_the_broker_is_refused_before_anything_is_stored(
    tmp_path,
    database_url: str,  # type: ignore[no-untyped-def]
) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text("max_payload: 32768\n")
    server = NatsServer(str(tmp_path / "nats"), extra=["-c", str(conf)]).start()
    runner = FakeRunnerInfo(server.url).start()
    try:
        settings = Settings(nats_url=server.url, database_url=database_url, request_timeout_s=0.5)
        async with AsyncTestClient(app=create_app(settings), base_url=LOCAL) as client:
            big = {"text": "x" * 20_000}
            task = await new_task(client, config=big, agent_config=big)
            r = await client.post("/api/runs", json={"task_id": task["id"]})
            assert r.status_code == 413, r.text
            assert "max_payload" in r.json()["detail"] and "32256 bytes" in r.json()["detail"]
            assert (await client.get(f"/api/runs?task_id={task['id']}")).json()["total"] == 0
            after = (await client.get(f"/api/tasks/{task['id']}")).json()
            assert (after["total_runs"], after["status"], after["last_run_at"]) == (0, "pending", None)
            small = await new_task(client)  # the same broker takes a run of ordinary size
            assert (await client.post("/api/runs", json={"task_id": small["id"]})).status_code == 201
    finally:
        runner.stop()
        server.stop()


async def test_artifacts_are_never_a_page_and_bad_index_entries_are_refused(
    client: AsyncTestClient,
    js,  # type: ignore[no-untyped-def]
) -> None:
    run, _, e = await run_with_artifact(client, js, "evil.html", b"<script>alert(1)</script>", "text/html")
    for name, size, content_type in [
        ("../../x", 1, "text/plain"),
        ("neg.txt", -5, "text/plain"),
        ("crlf.txt", 1, "text/plain\r\nSet-Cookie: a=b"),
        ("ctl\x01.txt", 1, "text/plain"),
    ]:
        await e.emit(
            ev.ArtifactCreated, data=ev.ArtifactData(name=name, size=size, content_type=content_type)
        )
    await eventually(lambda: _log_count(client, run["id"], 5))  # every event is in the log...
    listed = (await client.get(f"/api/runs/{run['id']}/artifacts")).json()
    assert [a["name"] for a in listed] == ["evil.html"]  # ...and only the valid entry in the index
    r = await client.get(f"/api/runs/{run['id']}/artifacts/evil.html")
    assert r.status_code == 200 and r.content == b"<script>alert(1)</script>"
    assert r.headers["content-disposition"].startswith("attachment;")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in r.headers["content-security-policy"]
    assert "default-src 'none'" in r.headers["content-security-policy"]


async def test_ready_names_a_stream_or_consumer_missing_on_the_broker(
    client: AsyncTestClient, own_nats: NatsServer
) -> None:
    """Deleting `gateway-events` once left new runs pending while /ready said 200 (a secured
    broker lets no service delete it; an operator with full rights still could)."""
    nc = await nats.connect(own_nats.url)
    try:
        await nc.jetstream().delete_consumer(subjects.EVENTS_STREAM, subjects.GATEWAY_EVENTS_CONSUMER)
    finally:
        await nc.close()
    r = await client.get("/ready")
    assert r.status_code == 503
    assert r.json()["checks"]["broker"] is False
    assert f"consumer {subjects.GATEWAY_EVENTS_CONSUMER}" in r.json()["detail"]

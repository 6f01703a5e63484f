"""The approvals inbox kept by run events: the gateway alone on a real nats-server and both
databases, the tests publishing events to JetStream the way a runner does (no runner runs here)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
from litestar.testing import AsyncTestClient

from agentbus.contracts import encode, subjects
from agentbus.contracts import events as ev
from agentbus.gateway.store import GatewayStore
from tests.integration.test_gateway import Emitter, new_run, new_task
from tests.support.servers import NatsServer
from tests.support.waiting import eventually

PLAN = {"steps": ["a", "b"]}


@pytest.fixture
async def js(own_nats: NatsServer):  # type: ignore[no-untyped-def]
    nc = await nats.connect(own_nats.url)
    yield nc.jetstream()
    await nc.drain()


async def approvals_of(client: AsyncTestClient, task_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/approvals?task_id={task_id}&limit=100")
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def logged(client: AsyncTestClient, run_id: str, n: int) -> bool:
    return (await client.get(f"/api/runs/{run_id}/logs")).json()["total"] == n


async def waiting(client: AsyncTestClient, js: Any) -> tuple[dict[str, Any], Emitter, ev.Event]:
    """A run whose `approval_required` (plan version 1, 60 s) is stored; its emitter and that event."""
    task = await new_task(client)
    run = await new_run(client, task["id"])
    e = Emitter(js, task["id"], run["id"])
    await e.emit(ev.AnalysisStart)
    request = await e.emit(ev.ApprovalRequired, data=ev.ApprovalRequiredData(plan=PLAN, timeout_s=60))
    await eventually(lambda: logged(client, run["id"], 2), what="the request stored")
    return run, e, request


async def test_a_request_stored_again_is_one_row(client: AsyncTestClient, js: Any) -> None:
    run, e, request = await waiting(client, js)
    # Redelivered with another message id (the ingest dedupes it by run and seq) ...
    await js.publish(
        subjects.run_event(run["task_id"], run["id"], "approval_required"),
        encode(request),
        headers={"Nats-Msg-Id": f"again-{request.id}"},
    )
    # ... and emitted again with a new seq for the same plan version (a runner took the run over).
    await e.emit(ev.ApprovalRequired, data=ev.ApprovalRequiredData(plan=PLAN, timeout_s=60))
    await eventually(lambda: logged(client, run["id"], 3), what="the second request stored")
    [row] = await approvals_of(client, run["task_id"])
    assert row["id"] == hashlib.sha256(f"{run['id']}:1".encode()).hexdigest()[:32]
    assert (row["status"], row["plan"], row["plan_version"]) == ("pending", PLAN, 1)
    assert datetime.fromisoformat(row["requested_at"]) == request.timestamp
    assert datetime.fromisoformat(row["deadline"]) == request.timestamp + timedelta(seconds=60)


@pytest.mark.parametrize(("cls", "status"), [(ev.Rejected, "rejected"), (ev.Approved, "approved")])
async def test_a_decision_no_one_made_settles_with_no_one_named(
    client: AsyncTestClient, js: Any, cls: type[ev.Event], status: str
) -> None:
    """The deadline's policy (on_approval_timeout: reject or approve) decides in the runner: its
    event settles the request, with no `decided_by`."""
    run, e, _ = await waiting(client, js)
    words = "no decision within the approval deadline"
    decision = await e.emit(cls, data=ev.DecisionData(feedback=words))
    await eventually(lambda: logged(client, run["id"], 3), what="the decision stored")
    [row] = await approvals_of(client, run["task_id"])
    assert (row["status"], row["feedback"], row["decided_by"]) == (status, words, None)
    assert datetime.fromisoformat(row["decided_at"]) == decision.timestamp
    assert (await client.get(f"/api/runs/{run['id']}")).json()["approval"]["decided_by"] is None


async def test_a_persons_decision_is_kept_with_who_made_it(
    client: AsyncTestClient, js: Any, database_url: str
) -> None:
    run, e, _ = await waiting(client, js)
    who = {"id": "key-1", "name": "Ann"}
    decided = datetime.now(UTC).replace(microsecond=0)
    approval = {
        "approved": False,
        "feedback": "not this",
        "decided_at": decided.isoformat(),
        "revise": False,
        "decided_by": who,
    }
    store = GatewayStore(database_url)  # the gateway's own store, on the same database
    try:
        assert await store.record_decision(run["id"], approval, decided)
        assert not await store.record_decision(run["id"], {**approval, "approved": True}, decided)
    finally:
        await store.close()
    [row] = await approvals_of(client, run["task_id"])
    assert (row["status"], row["feedback"], row["decided_by"]) == ("rejected", "not this", who)
    assert datetime.fromisoformat(row["decided_at"]) == decided
    assert (await client.get(f"/api/runs/{run['id']}")).json()["approval"]["decided_by"] == who

    # The runner's event for the same decision comes later: the row stays as the person left it.
    await e.emit(ev.Rejected, data=ev.DecisionData(feedback="not this"))
    await eventually(lambda: logged(client, run["id"], 3), what="the runner's rejection stored")
    assert await approvals_of(client, run["task_id"]) == [row]


async def test_progress_and_endings_of_runs_that_never_waited_add_nothing(
    client: AsyncTestClient, js: Any
) -> None:
    task = await new_task(client)
    run = await new_run(client, task["id"], require_approval=False)
    e = Emitter(js, task["id"], run["id"])
    await e.emit(ev.AnalysisStart)
    for step in (1, 2):
        data = ev.ProgressData(step=step, total_steps=2, progress_percent=50 * step, current_phase="x")
        await e.emit(ev.Progress, data=data)
    await e.emit(ev.Completion, data=ev.CompletionData(results={}, duration=1.0))
    await eventually(lambda: logged(client, run["id"], 4), what="the run's events stored")
    assert await approvals_of(client, task["id"]) == []

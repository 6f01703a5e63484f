"""The Python client (`agentbus.client`) against a real system: every REST call of the contract
once, typed answers, errors mapped to exceptions with `status_code` and `detail`."""

from __future__ import annotations

import pytest

from agentbus.client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    Unauthorized,
    event_type,
)
from agentbus.client.models import NewKey, Run, Task
from agentbus.contracts import Completion, PlanReady, Progress
from tests.e2e.conftest import ADMIN
from tests.support.system import System

pytestmark = pytest.mark.e2e
FAST = {"steps": 2, "step_delay_ms": 20}


def test_every_call_of_the_contract(secured: System) -> None:
    with Client(secured.base_url, ADMIN) as api:
        assert api.health().status == "ok"
        ready = api.ready()
        assert ready.status == "ready" and ready.checks and all(ready.checks.values())

        task = api.create_task("client task", agent_config={**FAST, "artifact": True}, approval_timeout_s=60)
        assert isinstance(task, Task) and task.require_approval and task.agent_config["artifact"] is True
        assert api.get_task(task.id).name == "client task"
        assert api.update_task(task.id, description="from the client").description == "from the client"
        assert task.id in [t.id for t in api.list_tasks(limit=100).items]

        run = api.start_run(task.id, labels={"via": "client"})
        assert isinstance(run, Run) and run.labels == {"via": "client"}
        types = []
        for event in api.watch(run.id):
            types.append(event_type(event))
            if event_type(event) == "approval_required":
                assert api.approve(run.id, feedback="ok").approval is not None
        assert types[-1] == "completion" and "progress" in types
        done = api.get_run(run.id)
        assert done.status == "completed" and done.last_seq == len(types)
        assert api.update_run(run.id, {"via": "client", "k": "v"}).labels["k"] == "v"
        assert [r.id for r in api.list_runs(task_id=task.id).items] == [run.id]

        logs = api.logs(run.id, since=1, limit=2)
        assert [e.seq for e in logs.items] == [2, 3] and logs.total == len(types) - 1
        stored = api.all_logs(run.id)
        assert isinstance(stored[1], PlanReady) and isinstance(stored[-1], Completion)
        assert any(isinstance(e, Progress) and e.data.total_steps == 2 for e in stored)

        (artifact,) = api.artifacts(run.id)
        assert api.download(run.id, artifact.name)[:1] == b"{"
        approval = api.list_approvals(task_id=task.id).items[0]
        assert approval.status == "approved" and api.get_approval(approval.id).run_id == run.id

        posted = api.post_metric(run.id, "client.score", 0.5, unit="ratio")
        assert api.get_metric(posted.id).value == 0.5
        assert {m.name for m in api.list_metrics(run_id=run.id, limit=100).items} >= {
            "duration",
            "client.score",
        }
        assert api.run_summary(run.id).metrics["client.score"].last == 0.5
        assert api.task_summary(task.id).metrics["steps"].count == 1
        assert api.summary().runs.total >= 1
        assert api.agent_summary("scripted").metric_count >= 1
        assert api.series("duration", task_id=task.id, bucket="1d").points[0].count == 1

        key = api.create_key("client viewer", "viewer")
        assert isinstance(key, NewKey) and key.key
        assert key.id in [k.id for k in api.list_keys(limit=100).items]
        with Client(secured.base_url, key.key) as viewer:
            assert viewer.me().role == "viewer"
            with pytest.raises(Forbidden) as refused:
                viewer.create_task("not allowed")
            assert refused.value.status_code == 403 and refused.value.detail
        assert [e.action for e in api.audit(target_id=run.id).items][-1] == "run.create"
        api.revoke_key(key.id)

        waiting = api.start_run(task.id)
        asked = _asked(api, waiting.id, since=0)
        assert api.revise(waiting.id, "shorter").approval.revise is True
        _asked(api, waiting.id, since=asked)  # the second version of the plan
        api.reject(waiting.id, "no")
        assert [event_type(e) for e in api.watch(waiting.id, since=asked)][-1] == "rejected"
        cancelled = api.start_run(task.id, require_approval=False, agent_config={"steps": 50})
        assert api.cancel(cancelled.id, reason="enough").id == cancelled.id
        api.delete_run(cancelled.id)
        with pytest.raises(NotFound):
            api.get_run(cancelled.id)
        api.delete_task(task.id)
        with pytest.raises(NotFound) as gone:
            api.get_task(task.id)
        assert gone.value.status_code == 404 and "not found" in gone.value.detail


def _asked(api: Client, run_id: str, since: int) -> int:
    """Waits (on the run's own events) until it asks for a decision after `since`; that event's seq."""
    for event in api.watch(run_id, since=since):
        if event_type(event) == "approval_required":
            return event.seq
    raise AssertionError(f"run {run_id} ended without asking for approval")


def test_errors_map_to_exceptions(secured: System, system: System) -> None:
    with Client(secured.base_url) as anonymous, pytest.raises(Unauthorized) as no_token:
        anonymous.list_tasks()
    assert no_token.value.status_code == 401
    with Client(system.base_url) as api:
        with pytest.raises(NotFound):
            api.get_run("no-such-run")
        with pytest.raises(NotFound):
            next(iter(api.watch("no-such-run")))  # a clear error, not a stream that never ends
        with pytest.raises(BadRequest) as bad:
            api.create_task("")
        assert bad.value.status_code in (400, 422) and bad.value.detail
        task = api.create_task("errors", require_approval=False, agent_config=FAST)
        run = api.start_run(task.id)
        assert [event_type(e) for e in api.watch(run.id)][-1] == "completion"
        with pytest.raises(Conflict) as ended:
            api.cancel(run.id)
        assert ended.value.status_code == 409
        with pytest.raises(Conflict):
            api.approve(run.id)
    with Client("http://127.0.0.1:1") as nowhere, pytest.raises(ConnectionFailed):
        nowhere.health()


async def test_async_client(system: System) -> None:
    async with AsyncClient(system.base_url) as api:
        task = await api.create_task("async", require_approval=False, agent_config=FAST)
        run = await api.start_run(task.id)
        seen = [e async for e in api.watch(run.id)]
        assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
        assert [e.seq for e in await api.all_logs(run.id)] == [e.seq for e in seen]
        # From past the end: nothing more to wait for.
        assert [e async for e in api.watch(run.id, since=seen[-1].seq)] == []
        assert (await api.get_run(run.id)).status == "completed"

"""The approvals inbox (`/api/approvals`) with a real runner: the gateway in-process on a real
nats-server and both databases, and a runner in-process taking its runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from agentbus.gateway.app import create_app
from agentbus.gateway.settings import Settings
from agentbus.runner import Runner, running
from tests.integration.conftest import LOCAL
from tests.integration.test_gateway import new_run, new_task
from tests.integration.test_runner import settings
from tests.support.servers import NatsServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)
FAST = {"steps": 1, "step_delay_ms": 0}


@pytest.fixture
async def runner(client: AsyncTestClient, own_nats: NatsServer) -> AsyncIterator[Runner]:
    # After the gateway (`client`): it has made the streams and buckets.
    async with running(settings(own_nats.url)) as r:
        yield r


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def listed(client: AsyncTestClient, query: str) -> dict[str, Any]:
    r = await client.get(f"/api/approvals?{query}")
    assert r.status_code == 200, r.text
    return r.json()


async def waiting_run(client: AsyncTestClient, task: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new run of `task`, once it waits for a decision; and its pending approval."""
    run = await new_run(client, task["id"])

    async def pending() -> dict[str, Any] | None:
        items = (await listed(client, f"task_id={task['id']}&status=pending&limit=100"))["items"]
        mine = [a for a in items if a["run_id"] == run["id"]]
        return mine[0] if mine else None

    approval = await eventually(pending, what=f"run {run['id']}'s pending approval")
    assert (await client.get(f"/api/runs/{run['id']}")).json()["status"] == "awaiting_approval"
    return run, approval


async def settled(client: AsyncTestClient, approval_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = (await client.get(f"/api/approvals/{approval_id}")).json()
        return body if body["status"] == status else None

    return await eventually(check, what=f"approval {approval_id} {status}")


async def run_status(client: AsyncTestClient, run_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = (await client.get(f"/api/runs/{run_id}")).json()
        return body if body["status"] == status else None

    return await eventually(check, what=f"run {run_id} {status}")


async def audited(client: AsyncTestClient, target_id: str, action: str) -> list[dict[str, Any]]:
    """The audit entries of one action on one target, newest first."""
    r = await client.get(f"/api/audit?target_id={target_id}&action={action}&limit=100")
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


def who_on_what(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["actor"]["id"], e["target_type"], e["target_id"]) for e in entries]


async def test_a_waiting_run_has_one_pending_approval_and_approving_settles_it(
    client: AsyncTestClient, runner: Runner
) -> None:
    task = await new_task(client, agent_config=FAST, approval_timeout_s=600)
    run, approval = await waiting_run(client, task)
    state = (await client.get(f"/api/runs/{run['id']}")).json()
    assert (approval["run_id"], approval["task_id"], approval["plan_version"]) == (run["id"], task["id"], 1)
    assert approval["plan"] == state["plan"] == {"steps": ["Step 1"]}
    assert at(approval["deadline"]) - at(approval["requested_at"]) == timedelta(seconds=600)
    assert (approval["decided_at"], approval["decided_by"], approval["feedback"]) == (None, None, None)
    assert (await client.get(f"/api/approvals/{approval['id']}")).json() == approval
    page = await listed(client, f"task_id={task['id']}")
    assert page["total"] == 1 and page["items"] == [approval] and page["next_cursor"] is None

    r = await client.post(f"/api/runs/{run['id']}/approve", json={"approved": True, "feedback": "go"})
    assert r.status_code == 200, r.text
    decided = r.json()["approval"]
    after = (await client.get(f"/api/approvals/{approval['id']}")).json()  # in the decision's transaction
    assert (after["status"], after["feedback"]) == ("approved", "go")
    # Who decided, as the run's approval records it (the decision's `decided_by`).
    assert after["decided_by"] == decided["decided_by"]
    assert at(after["decided_at"]) == at(decided["decided_at"])
    assert after["requested_at"] == approval["requested_at"] and after["plan"] == approval["plan"]
    final = await run_status(client, run["id"], "completed")
    assert final["approval"]["approved"] is True and final["approval"]["decided_by"] == after["decided_by"]
    assert (
        await client.get(f"/api/approvals/{approval['id']}")
    ).json() == after  # the runner's event changed nothing
    assert (await listed(client, f"task_id={task['id']}&status=pending"))["total"] == 0


async def test_reject_revise_deadline_and_cancel(client: AsyncTestClient, runner: Runner) -> None:
    task = await new_task(client, agent_config=FAST, max_revision_rounds=1)
    rejected, first = await waiting_run(client, task)
    r = await client.post(f"/api/runs/{rejected['id']}/approve", json={"approved": False, "feedback": "no"})
    assert r.status_code == 200, r.text
    body = await settled(client, first["id"], "rejected")
    assert body["feedback"] == "no" and body["decided_at"] is not None
    await run_status(client, rejected["id"], "rejected")
    [entry] = await audited(client, rejected["id"], "run.reject")
    assert who_on_what([entry]) == [("local", "run", rejected["id"])]  # authentication off: the local user
    assert entry["detail"] == {"task_id": task["id"], "plan_version": 1, "revise": False}

    revised, v1 = await waiting_run(client, task)
    r = await client.post(
        f"/api/runs/{revised['id']}/approve", json={"approved": False, "revise": True, "feedback": "shorter"}
    )
    assert r.status_code == 200, r.text
    sent_back = await settled(client, v1["id"], "revise_requested")
    assert sent_back["feedback"] == "shorter" and sent_back["plan_version"] == 1

    async def second_version() -> dict[str, Any] | None:
        items = (await listed(client, f"task_id={task['id']}&status=pending"))["items"]
        return next((a for a in items if a["run_id"] == revised["id"]), None)

    v2 = await eventually(second_version, what="plan version 2 pending")
    assert v2["plan_version"] == 2 and v2["id"] != v1["id"]
    assert at(v2["requested_at"]) >= at(sent_back["decided_at"])
    r = await client.post(f"/api/runs/{revised['id']}/approve", json={"approved": True})
    assert r.status_code == 200, r.text
    await settled(client, v2["id"], "approved")
    await run_status(client, revised["id"], "completed")
    sent = await audited(client, revised["id"], "run.reject")
    assert who_on_what(sent) == [("local", "run", revised["id"])] and sent[0]["detail"]["revise"] is True
    assert who_on_what(await audited(client, revised["id"], "run.approve")) == [
        ("local", "run", revised["id"])
    ]
    # A cancel of a run that has ended is refused, and leaves no entry.
    r = await client.post(f"/api/runs/{revised['id']}/cancel")
    assert r.status_code == 409, r.text
    assert await audited(client, revised["id"], "run.cancel") == []

    cancelled, waiting = await waiting_run(client, task)
    assert (await client.post(f"/api/runs/{cancelled['id']}/cancel")).status_code == 202
    body = await settled(client, waiting["id"], "cancelled")
    assert body["decided_by"] is None and body["feedback"] is None
    await run_status(client, cancelled["id"], "cancelled")
    # The accepted cancel is recorded once; cancelling it again is a 409 that adds nothing.
    assert (await client.post(f"/api/runs/{cancelled['id']}/cancel")).status_code == 409
    [entry] = await audited(client, cancelled["id"], "run.cancel")
    assert who_on_what([entry]) == [("local", "run", cancelled["id"])]
    assert entry["detail"] == {"task_id": task["id"]}

    short = await new_task(client, agent_config=FAST, approval_timeout_s=1)
    expired, deadline = await waiting_run(client, short)
    body = await settled(client, deadline["id"], "expired")
    assert at(body["decided_at"]) >= at(deadline["deadline"]) and body["decided_by"] is None
    assert (await run_status(client, expired["id"], "timeout"))["error_message"].endswith("approval")

    statuses = [a["status"] for a in (await listed(client, f"task_id={task['id']}"))["items"]]
    assert sorted(statuses) == ["approved", "cancelled", "rejected", "revise_requested"]


async def walk(client: AsyncTestClient, query: str, limit: int) -> tuple[list[dict[str, Any]], list[int]]:
    """Every item, following next_cursor from the first page; and each page's total."""
    items: list[dict[str, Any]] = []
    totals: list[int] = []
    base = "&".join(q for q in (query, f"limit={limit}") if q)
    url = base
    while True:
        page = await listed(client, url)
        items += page["items"]
        totals.append(page["total"])
        if page["next_cursor"] is None:
            return items, totals
        assert len(page["items"]) == limit
        url = f"{base}&cursor={page['next_cursor']}"


def key(a: dict[str, Any]) -> tuple[datetime, str]:
    return at(a["requested_at"]), a["id"]


async def test_pages_order_filters_cursors_and_errors(client: AsyncTestClient, runner: Runner) -> None:
    tasks = [await new_task(client, agent_config=FAST) for _ in range(2)]
    made = [(await waiting_run(client, tasks[i % 2]))[1] for i in range(5)]

    pending, totals = await walk(client, "status=pending", 2)
    assert [a["id"] for a in pending] == [a["id"] for a in sorted(made, key=key)]  # oldest first
    assert totals == [5, 5, 5]
    by_skip = [
        a["id"]
        for s in (0, 2, 4)
        for a in (await listed(client, f"status=pending&skip={s}&limit=2"))["items"]
    ]
    assert by_skip == [a["id"] for a in pending]

    mine, totals = await walk(client, f"task_id={tasks[0]['id']}", 2)
    assert [a["id"] for a in mine] == [a["id"] for a in sorted(made[0::2], key=key, reverse=True)]
    assert totals == [3, 3]

    # Decide two: the unfiltered list (merged from every status) is still one order, newest first.
    for a in made[:2]:
        r = await client.post(f"/api/runs/{a['run_id']}/approve", json={"approved": False})
        assert r.status_code == 200, r.text
    everything, totals = await walk(client, "", 2)
    assert [a["id"] for a in everything] == [a["id"] for a in sorted(made, key=key, reverse=True)]
    assert totals == [5, 5, 5] and len({a["id"] for a in everything}) == 5
    assert [a["status"] for a in everything][-2:] == ["rejected", "rejected"]
    assert (await listed(client, "status=rejected"))["total"] == 2
    assert (await listed(client, "status=pending"))["total"] == 3
    assert (await listed(client, f"status=pending&task_id={tasks[1]['id']}"))["total"] == 1
    assert (await listed(client, "status=expired"))["items"] == []
    page = await listed(client, "")
    assert (page["skip"], page["limit"], page["total"], len(page["items"])) == (0, 10, 5, 5)
    for query in ("", "status=pending&", f"task_id={tasks[1]['id']}&"):  # the deepest skip allowed
        deepest = await listed(client, f"{query}skip={2**63 - 1}")
        assert deepest["items"] == [] and deepest["next_cursor"] is None, query

    assert (await client.get("/api/approvals/nope")).status_code == 404
    cursor = (await listed(client, "limit=1"))["next_cursor"]
    for query in (
        "status=bogus",
        "status=revised",
        "cursor=not-a-cursor",
        "cursor=W10",
        "limit=0",
        "limit=101",
        "skip=-1",
        "limit=1e3",
        f"skip=1&cursor={cursor}",
    ):
        r = await client.get(f"/api/approvals?{query}")
        assert r.status_code == 400, (query, r.text)
        assert r.json()["detail"]


async def test_deleting_a_run_or_its_task_deletes_its_approvals(
    client: AsyncTestClient, runner: Runner, own_nats: NatsServer, database_url: str
) -> None:
    task = await new_task(client, agent_config=FAST)
    run, approval = await waiting_run(client, task)
    _, kept = await waiting_run(client, task)
    # Deleted through a second gateway copy that does not wait for the cancelled runs to report
    # (what goes with a deleted run is the subject here, not the wait).
    quick = Settings(nats_url=own_nats.url, database_url=database_url, delete_wait_s=0)
    async with AsyncTestClient(app=create_app(quick), base_url=LOCAL) as other:
        assert (await other.delete(f"/api/runs/{run['id']}")).status_code == 204
        [entry] = await audited(client, run["id"], "run.delete")  # kept: the trail outlives the run
        assert who_on_what([entry]) == [("local", "run", run["id"])]
        assert entry["detail"] == {"task_id": task["id"]}
        assert await audited(client, run["id"], "run.cancel") == []  # a delete is not a cancel
        assert (await client.get(f"/api/approvals/{approval['id']}")).status_code == 404
        assert (await client.get(f"/api/approvals/{kept['id']}")).status_code == 200
        assert (await other.delete(f"/api/tasks/{task['id']}")).status_code == 204
    assert (await client.get(f"/api/approvals/{kept['id']}")).status_code == 404
    assert (await listed(client, f"task_id={task['id']}"))["total"] == 0

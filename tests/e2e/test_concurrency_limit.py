"""A task's `max_concurrent_runs` against the real processes: runs beyond it wait `pending` and start
in creation order as earlier ones end, also across a gateway restart and a runner restart.

One system for the module, on SQLite (what `make run` uses; the admission's transactions on
PostgreSQL are covered by tests/integration/test_concurrency_limit.py, on both databases). The reaper
comes round rarely here (REAPER_INTERVAL_S), so what releases the held runs is the end of the runs
before them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.support.client import TERMINAL, Api, events_until, next_event
from tests.support.system import System, start_system
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

ENV = {
    "RUNNER_ACK_WAIT_S": "3",  # a killed runner's runs come back to the next one within seconds
    "RUNNER_HEARTBEAT_S": "1",
    "RUNNER_GRACE_S": "1",
    "RUNNER_FETCH_TIMEOUT_S": "1",
    "REAPER_AFTER_S": "120",
    "REAPER_INTERVAL_S": "600",  # never during a test: the ends of runs release the held ones
}


def quick(ms: int, steps: int = 3) -> dict[str, Any]:
    """The agent_config of a scripted run that takes about steps * ms."""
    return {"steps": steps, "step_delay_ms": ms}


@pytest.fixture(scope="module")
def limited() -> Iterator[System]:
    system = start_system(**ENV)
    try:
        yield system
    except BaseException:
        print(system.logs())
        raise
    finally:
        system.stop()


@pytest.fixture
async def api(limited: System) -> AsyncIterator[Api]:
    client = Api(limited.base_url, limited.ws_url)
    try:
        yield client
    finally:
        await client.close()


class Watcher:
    """Follows a task's stream: which of its runs are live at each event, and in what order they
    started."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.most = 0
        self.started: list[str] = []
        self.ended: list[str] = []

    async def follow(self, api: Api, task_id: str, runs: int, ready: asyncio.Event) -> None:
        async with api.ws(f"/ws/tasks/{task_id}?since=0") as ws:
            ready.set()
            while len(self.ended) < runs:
                e = await next_event(ws, timeout=60)
                if e["event_type"] == "analysis_start":
                    self.started.append(e["run_id"])
                    self.live.add(e["run_id"])
                elif e["event_type"] in TERMINAL:
                    self.ended.append(e["run_id"])
                    self.live.discard(e["run_id"])
                self.most = max(self.most, len(self.live))


async def live_runs(api: Api, task_id: str) -> int:
    total = 0
    for status in ("running", "awaiting_approval"):
        page = await api.http.get("/api/runs", params={"task_id": task_id, "status": status, "limit": 1})
        total += page.json()["total"]
    return total


async def test_at_most_the_limit_run_at_once_and_they_start_in_creation_order(api: Api) -> None:
    task = await api.task(require_approval=False, max_concurrent_runs=2)
    watcher, ready = Watcher(), asyncio.Event()
    follower = asyncio.create_task(watcher.follow(api, task["id"], 5, ready))
    await ready.wait()
    # Different lengths: the runs end (and the held ones start) well apart.
    lengths = [200, 400, 400, 400, 100]
    runs = [await api.run(task["id"], agent_config=quick(ms)) for ms in lengths]
    ids = [r["id"] for r in runs]
    assert [r["run_number"] for r in runs] == [1, 2, 3, 4, 5]
    assert all(r["status"] == "pending" for r in runs)
    # The last one cannot start before two runs have ended: a pending run of its task meanwhile.
    assert (await api.get_run(ids[4]))["status"] == "pending"
    waiting = (await api.http.get("/api/runs", params={"task_id": task["id"], "status": "pending"})).json()
    assert ids[4] in [r["id"] for r in waiting["items"]]

    polled = 0
    while not follower.done():  # a second observer, the API's own view: sampled every 20 ms
        polled = max(polled, await live_runs(api, task["id"]))
        await asyncio.sleep(0.02)
    await follower
    assert watcher.most == 2 and polled <= 2, (watcher.most, polled)
    assert watcher.started == ids, "started in creation order"
    for rid in ids:
        assert (await api.get_run(rid))["status"] == "completed"


async def test_a_cancelled_held_run_ends_cancelled_and_never_starts(api: Api) -> None:
    task = await api.task(require_approval=False, max_concurrent_runs=1)
    first = await api.run(task["id"], agent_config=quick(200, steps=20))  # about 4 s
    held = await api.run(task["id"], agent_config=quick(50))
    last = await api.run(task["id"], agent_config=quick(50))
    await api.wait_status(first["id"], "running")
    r = await api.http.post(f"/api/runs/{held['id']}/cancel", json={"reason": "not needed"})
    assert r.status_code == 202, r.text
    ended = await api.wait_status(held["id"], "cancelled")
    assert ended["error_message"] == "cancelled: not needed" and ended["progress"] == 0
    async with api.ws(f"/ws/runs/{held['id']}?since=0") as ws:
        seen = await events_until(ws, lambda e: e["event_type"] in TERMINAL)
    assert [(e["seq"], e["event_type"]) for e in seen] == [(1, "cancelled")]
    assert await api.logs(held["id"]) == seen
    # Its slot was never the last run's: that one waits for the first.
    assert (await api.get_run(first["id"]))["status"] == "running"
    assert (await api.get_run(last["id"]))["status"] == "pending"
    done = await api.wait_status(last["id"], "completed")
    assert done["started_at"] >= (await api.get_run(first["id"]))["completed_at"]
    assert [e["event_type"] for e in await api.logs(held["id"])] == ["cancelled"]


async def test_raising_the_limit_starts_held_runs_at_once(api: Api) -> None:
    task = await api.task(require_approval=False, max_concurrent_runs=1)
    runs = [await api.run(task["id"], agent_config=quick(200, steps=15)) for _ in range(3)]  # 3 s each
    await api.wait_status(runs[0]["id"], "running")
    assert (await api.get_run(runs[1]["id"]))["status"] == "pending"
    r = await api.http.patch(f"/api/tasks/{task['id']}", json={"max_concurrent_runs": 3})
    assert r.status_code == 200, r.text

    async def three_at_once() -> bool:
        return await live_runs(api, task["id"]) == 3

    await eventually(three_at_once, timeout=2.5, what="all three running before the first ends")
    for run in runs:
        await api.wait_status(run["id"], "completed")


async def sequential(api: Api, ids: list[str]) -> None:
    """Every run completed, each started only once the one before it had ended (a limit of 1)."""

    async def completed(rid: str) -> dict[str, Any] | None:
        run = await api.get_run(rid)
        return run if run["status"] == "completed" else None

    finals = [
        await eventually(
            lambda rid=rid: completed(rid), 60, f"run {rid} completed", retry_on=(httpx.HTTPError,)
        )
        for rid in ids
    ]
    for before, after in itertools.pairwise(finals):
        assert after["started_at"] >= before["completed_at"], (before, after)


async def test_held_runs_survive_a_gateway_restart(api: Api, limited: System) -> None:
    task = await api.task(require_approval=False, max_concurrent_runs=1)
    ids = [(await api.run(task["id"], agent_config=quick(100, steps=10)))["id"] for _ in range(3)]
    await api.wait_status(ids[0], "running")
    limited.gateways[0][0].kill()
    await asyncio.to_thread(limited.restart_gateway, 0)  # the first run ends meanwhile
    await sequential(api, ids)


async def test_held_runs_survive_a_runner_restart(api: Api, limited: System) -> None:
    task = await api.task(require_approval=False, max_concurrent_runs=1)
    ids = [(await api.run(task["id"], agent_config=quick(100, steps=10)))["id"] for _ in range(3)]
    await api.wait_status(ids[0], "running")
    limited.runners[0].kill()
    limited.add_runner()  # takes the first run over once its message comes back (RUNNER_ACK_WAIT_S)
    await sequential(api, ids)

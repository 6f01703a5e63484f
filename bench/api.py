"""The gateway's API as the harness itself calls it to set a benchmark up (tasks, runs, waiting for
a status): plain httpx calls with this run's admin key (or token, bench.auth), each failing on any
answer not 2xx."""

from __future__ import annotations

import time

import httpx

from bench import auth
from tests.support.system import System

FAST_RUN = {"steps": 1, "step_delay_ms": 0}


def call(
    system: System,
    method: str,
    path: str,
    json: object = None,
    params: dict[str, str | int] | None = None,
    timeout: float = 30,
) -> httpx.Response:
    """One authenticated request; raises on an answer that is not 2xx."""
    url = f"{system.base_url}{path}"
    r = httpx.request(method, url, json=json, params=params, headers=auth.bearer(url), timeout=timeout)
    r.raise_for_status()
    return r


def create_task(system: System, **fields: object) -> dict:
    return call(system, "POST", "/api/tasks", json={"name": "bench", **fields}).json()


def create_run(system: System, task_id: str) -> dict:
    return call(system, "POST", "/api/runs", json={"task_id": task_id}).json()


def cancel_run(system: System, run_id: str) -> None:
    call(system, "POST", f"/api/runs/{run_id}/cancel")


def list_paths(task_id: str, run_id: str) -> dict[str, str]:
    """Every list and filter of the API (docs/api.md), and a run's log: name -> path."""
    return {
        "GET /api/tasks?limit=10": "/api/tasks?limit=10",
        "GET /api/tasks?status=completed": "/api/tasks?status=completed&limit=10",
        "GET /api/runs?limit=10": "/api/runs?limit=10",
        "GET /api/runs?task_id=": f"/api/runs?task_id={task_id}&limit=10",
        "GET /api/runs?status=completed": "/api/runs?status=completed&limit=10",
        "GET /api/runs/{id}/logs": f"/api/runs/{run_id}/logs",
    }


def deep_cursor(system: System, depth: int) -> str:
    """The cursor of the page that starts `depth` tasks deep (skip's cost paid once, here)."""
    r = call(system, "GET", "/api/tasks", timeout=120, params={"skip": depth - 1, "limit": 1})
    cursor = r.json()["next_cursor"]
    if not isinstance(cursor, str):
        raise TypeError(f"no next_cursor {depth} tasks deep")
    return cursor


def wait_run(system: System, run_id: str, status: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = call(system, "GET", f"/api/runs/{run_id}").json()
        if run["status"] == status:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} is {run['status']}, not {status}")
        time.sleep(0.05)


def waiting_run(system: System) -> dict:
    """A run held by the runner, awaiting approval: synthetic events are published after its seq 3."""
    task = create_task(system, agent_config=FAST_RUN, require_approval=True)
    run = create_run(system, task["id"])
    return wait_run(system, run["id"], "awaiting_approval")

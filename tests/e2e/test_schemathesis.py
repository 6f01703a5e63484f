"""schemathesis against the live `/openapi.json` of the real processes, every check on.

`st run` drives the gateway of the session's system: the examples, coverage (boundary and
negative values of every parameter and body field), fuzzing and stateful (following the links it
infers, e.g. POST /api/tasks -> GET /api/tasks/{task_id}) phases, with all checks: no 5xx, every
status code and content type documented, every response matching its schema, schema-valid input
accepted and invalid input refused, 405 with `Allow` for other methods, a deleted resource gone.
It runs as the CLI because its pytest integration (`schemathesis.pytest.from_fixture`) does not
work with pytest 9 (it sets `Node._nodeid`, which is gone), and the CLI's report is the readable
one. Generation is deterministic (`--generation-deterministic`); a stored task, finished run,
artifact, metric, approval and page cursors are handed to tests/support/st_hooks.py so generated requests
reach existing things too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ADMIN
from tests.support.client import Api
from tests.support.system import System
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ST = Path(sys.executable).with_name("st")
# Per operation, in the fuzzing phase (the coverage and stateful phases run beside it): at 40, the
# whole run of 42 operations took about 90 s on two cores.
MAX_EXAMPLES = 30
LIVE = ("pending", "running", "awaiting_approval")


async def _get(api: Api, path: str, **params: Any) -> Any:
    r = await api.http.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def stored_things(api: Api) -> dict[str, str]:
    """A task with two finished runs, the first with an artifact and metrics; two approved plans (of
    another task's runs); two API keys; two webhooks, the first with the runs' deliveries (to a port
    no one listens on); page cursors."""
    hooks = []
    for _ in range(2):
        r = await api.http.post(
            "/api/webhooks",
            json={
                "url": "http://127.0.0.1:9/seed",
                "events": ["completion"],
                "secret": "schemathesis-seed-0123",
            },
        )
        assert r.status_code == 201, r.text
        hooks.append(r.json()["id"])
    task = await api.task(
        name="schemathesis seed",
        require_approval=False,
        agent_config={"steps": 2, "step_delay_ms": 10, "artifact": True},
    )
    await api.task(name="schemathesis seed, the second")  # so that the first page of tasks has a next
    runs = [await api.run(task["id"]) for _ in range(2)]
    for run in runs:
        await api.wait_status(run["id"], "completed")
    approved = await api.task(
        name="schemathesis seed, approved", agent_config={"steps": 1, "step_delay_ms": 0}
    )
    for _ in range(2):
        waiting = await api.run(approved["id"])
        await api.wait_status(waiting["id"], "awaiting_approval")
        r = await api.http.post(f"/api/runs/{waiting['id']}/approve", json={"approved": True})
        assert r.status_code == 200, r.text
    for role in ("viewer", "operator"):
        r = await api.http.post("/api/keys", json={"name": f"schemathesis {role}", "role": role})
        assert r.status_code == 201, r.text
    run_id = runs[0]["id"]
    webhook_id = hooks[0]

    async def delivery_cursor() -> str | None:
        return (await _get(api, f"/api/webhooks/{webhook_id}/deliveries", limit=1))["next_cursor"]

    artifacts = await _get(api, f"/api/runs/{run_id}/artifacts")
    assert artifacts, "the scripted agent writes result.json"

    async def a_metric() -> str | None:
        page = await _get(api, "/api/metrics", run_id=run_id)
        return page["items"][0]["id"] if page["items"] else None

    return {
        "task_id": task["id"],
        "run_id": run_id,
        "artifact": artifacts[0]["name"],
        "metric_id": await eventually(a_metric, what="a metric of the seeded run"),
        "task_cursor": (await _get(api, "/api/tasks", limit=1))["next_cursor"],
        "run_cursor": (await _get(api, "/api/runs", limit=1))["next_cursor"],
        "approval_id": (await _get(api, "/api/approvals", task_id=approved["id"]))["items"][0]["id"],
        "approval_cursor": (await _get(api, "/api/approvals", limit=1))["next_cursor"],
        "key_cursor": (await _get(api, "/api/keys", limit=1))["next_cursor"],
        "audit_cursor": (await _get(api, "/api/audit", limit=1))["next_cursor"],
        "webhook_id": webhook_id,
        "webhook_cursor": (await _get(api, "/api/webhooks", limit=1))["next_cursor"],
        "delivery_cursor": await eventually(delivery_cursor, what="two deliveries of the seeded webhook"),
    }


async def live_runs(api: Api) -> set[str]:
    out: set[str] = set()
    for status in LIVE:
        cursor = None
        while True:
            params: dict[str, Any] = {"status": status, "limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = await _get(api, "/api/runs", **params)
            out |= {r["id"] for r in page["items"]}
            cursor = page["next_cursor"]
            if not cursor:
                break
    return out


async def end_runs(api: Api, run_ids: set[str]) -> None:
    """Cancel the runs the fuzzing left waiting, so the session's runner is free for the next tests."""
    for run_id in run_ids:
        r = await api.http.post(f"/api/runs/{run_id}/cancel", json={"reason": "schemathesis done"})
        assert r.status_code in (202, 404, 409), r.text

    async def ended() -> bool:
        return not (await live_runs(api)) & run_ids

    await eventually(ended, timeout=60, what="the runs schemathesis started to end")


def section(output: str, *titles: str) -> str:
    """The CLI's output from the first of these section titles on (all of it if none is there)."""
    for title in titles:
        at = output.find(f" {title} ===")
        if at >= 0:
            return output[output.rfind("\n", 0, at) + 1 :]
    return output


def report(output: str) -> str:
    """The CLI's errors, failures and summary (its progress lines left out)."""
    text = section(output, "ERRORS", "FAILURES", "SUMMARY")
    return text if len(text) < 30000 else text[:15000] + "\n[...]\n" + text[-15000:]


def config(openapi: dict[str, Any]) -> str:
    """schemathesis.toml for the run (every check stays on)."""
    # Operations whose only input is a path segment: negative data cannot be generated for them (a
    # path segment is always a string), and fuzzing spends seconds per operation failing to; their
    # negative cases (other methods, bad content types) come from the coverage phase.
    path_only = sorted(
        f"{method.upper()} {path}"
        for path, item in openapi["paths"].items()
        for method, op in item.items()
        if "requestBody" not in op and all(p["in"] == "path" for p in op.get("parameters", []))
    )
    names = ", ".join(json.dumps(n) for n in path_only)
    return f"""
# One worker: with two, one could delete the seeded task (and with it the runs) between the other's
# POST /api/runs and its follow-up, which the stateful check reports as "created resource not found".
workers = 1
request-timeout = 10
# Negative data for an operation whose only input is an unconstrained string (a path id) cannot be
# generated: that is what this health check reports, nothing about the API.
suppress-health-check = ["filter_too_much"]

[generation]
max-examples = {MAX_EXAMPLES}
deterministic = true

[[operations]]
include-name = [{names}]
phases.fuzzing.generation.mode = "positive"

# A live run's event stream goes on until the run ends: each read of one stops after 1 s.
[[operations]]
include-name = "GET /api/runs/{{run_id}}/events"
request-timeout = 1

# Deleting a task deletes its runs too, which the stateful phase cannot know: after POST /api/tasks
# -> POST /api/runs -> DELETE /api/tasks/{{task_id}}, the run's follow-up (approve, cancel) answers 404 and
# the "created resource not found" check reports it. This operation keeps its other phases.
[[operations]]
include-name = "DELETE /api/tasks/{{task_id}}"
phases.stateful.enabled = false

# Each answer waits for a discovery round of the runners (a quarter of a second).
[[operations]]
include-name = "GET /api/agents/{{kind}}"
generation.max-examples = 20
"""


async def test_schemathesis_finds_nothing_against_the_live_openapi(
    secured: System, admin_api: Api, tmp_path: Path
) -> None:
    """Against the system with authentication on, as the admin: the `ignored_auth` check also sends
    each request without the credential and expects the 401 the document declares."""
    system, api = secured, admin_api
    known = await stored_things(api)
    before = await live_runs(api)
    (tmp_path / "schemathesis.toml").write_text(config(await _get(api, "/openapi.json")))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "SCHEMATHESIS_HOOKS": "tests.support.st_hooks",
        "AGENTBUS_ST_KNOWN": json.dumps(known),
    }
    cmd = [
        str(ST),
        f"--config-file={tmp_path / 'schemathesis.toml'}",
        "run",
        f"{system.base_url}/openapi.json",
        "--checks=all",
        f"--header=Authorization: Bearer {ADMIN}",
        "--no-color",
    ]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await end_runs(api, await live_runs(api) - before)
    output = out.decode(errors="replace")
    print(f"schemathesis took {time.monotonic() - started:.1f}s\n{section(output, 'SUMMARY')}")
    assert proc.returncode == 0, report(output)
    counts = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", output)
    assert counts and len(set(counts.groups())) == 1, f"not every operation was tested:\n{report(output)}"

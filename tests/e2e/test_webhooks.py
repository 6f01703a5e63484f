"""Webhooks end to end: the session's secured system (real processes, authentication on, short
backoff: `WEBHOOK_SETTINGS`) delivers run events to real HTTP receivers on loopback; signatures are
checked with the README's own code."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADMIN, WEBHOOK_SETTINGS
from tests.support.client import Api
from tests.support.receiver import Receiver
from tests.support.servers import free_port
from tests.support.system import System
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-webhook-key-0123456789"
BACKOFF = float(WEBHOOK_SETTINGS["WEBHOOK_BACKOFF_S"])
MAX_ATTEMPTS = int(WEBHOOK_SETTINGS["WEBHOOK_MAX_ATTEMPTS"])


@pytest.fixture
async def admin(secured: System) -> AsyncIterator[Api]:
    """The admin of the session's secured system; the webhooks a test made are deleted after it
    (the system is shared: later tests' events must not be sent to receivers that are gone)."""
    client = Api(secured.base_url, secured.ws_url, token=ADMIN)
    before = {
        h["id"] for h in (await client.http.get("/api/webhooks", params={"limit": 100})).json()["items"]
    }
    try:
        yield client
    finally:
        async with httpx.AsyncClient(base_url=secured.base_url, timeout=10, headers=client.headers) as http:
            for hook in (await http.get("/api/webhooks", params={"limit": 100})).json()["items"]:
                if hook["id"] not in before:
                    await http.delete(f"/api/webhooks/{hook['id']}")
        await client.close()


def readme_section() -> str:
    return (ROOT / "README.md").read_text().split("## Webhooks", 1)[1].split("\n## ", 1)[0]


def readme_verify() -> Any:
    """`verified(body, signature)` of the README's receiver, with SECRET as its secret."""
    source = re.findall(r"```python\n(.*?)```", readme_section(), re.S)[0]
    definitions = source.split("\nclass Hook", 1)[0].replace('os.environ["WEBHOOK_SECRET"]', repr(SECRET))
    scope: dict[str, Any] = {}
    exec(definitions, scope)  # the README's imports and `verified`, not its server
    return scope["verified"]


async def make_webhook(api: Api, url: str, events: list[str]) -> dict[str, Any]:
    r = await api.http.post("/api/webhooks", json={"url": url, "events": events, "secret": SECRET})
    assert r.status_code == 201, r.text
    assert SECRET not in r.text
    return r.json()


async def deliveries(api: Api, webhook_id: str, **params: Any) -> list[dict[str, Any]]:
    r = await api.http.get(f"/api/webhooks/{webhook_id}/deliveries", params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_approval_required_is_delivered_signed(admin: Api) -> None:
    verified = readme_verify()
    with Receiver() as receiver:
        hook = await make_webhook(admin, receiver.url, ["approval_required"])
        assert hook["events"] == ["approval_required"] and hook["url"] == receiver.url
        task = await admin.task(agent_config={"steps": 1, "step_delay_ms": 0})
        run = await admin.run(task["id"])
        got = await eventually(lambda: receiver.requests, what="the approval_required delivery")
        request = got[0]
        body = json.loads(request.body)
        assert request.headers["x-agentbus-event"] == "approval_required"
        assert request.headers["content-type"] == "application/json"
        expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-agentbus-signature"] == expected
        assert verified(request.body, request.headers["x-agentbus-signature"])
        assert not verified(request.body + b" ", request.headers["x-agentbus-signature"])
        assert body["event_type"] == "approval_required" and body["run_id"] == run["id"]
        assert (
            body["webhook_id"] == hook["id"] and body["delivery_id"] == request.headers["x-agentbus-delivery"]
        )
        # The event as the stored log (and the WebSocket) has it, plus the two ids.
        logged = next(e for e in await admin.logs(run["id"]) if e["event_type"] == "approval_required")
        assert {k: v for k, v in body.items() if k not in ("webhook_id", "delivery_id")} == logged

        async def delivered() -> list[dict[str, Any]]:
            return [d for d in await deliveries(admin, hook["id"]) if d["status"] == "delivered"]

        (row,) = await eventually(delivered, what="the delivery marked delivered")
        assert row["id"] == body["delivery_id"] and row["attempts"] == 1 and row["last_status_code"] == 204
        assert row["run_id"] == run["id"] and row["task_id"] == task["id"] and row["delivered_at"]
        r = await admin.http.post(f"/api/runs/{run['id']}/cancel", json={"reason": "done"})
        assert r.status_code == 202, r.text
    assert len(receiver.requests) == 1  # approval_required only: the other events are not asked for


async def test_failures_are_retried_with_backoff_then_given_up(admin: Api) -> None:
    with Receiver(fail_first=2) as flaky, Receiver(fail_first=10**6) as broken:
        good = await make_webhook(admin, flaky.url, ["completion"])
        bad = await make_webhook(admin, broken.url, ["*"])
        task = await admin.task(require_approval=False, agent_config={"steps": 1, "step_delay_ms": 0})
        run = await admin.run(task["id"])
        await admin.wait_status(run["id"], "completed")

        async def settled(hook: str, status: str) -> dict[str, Any] | None:
            rows = await deliveries(admin, hook, status=status)
            return next((d for d in rows if d["event_type"] == "completion"), None)

        row = await eventually(lambda: settled(good["id"], "delivered"), what="delivered after retries")
        assert row["attempts"] == 3 and row["last_status_code"] == 204
        assert len(flaky.requests) == 3
        assert len({r.headers["x-agentbus-delivery"] for r in flaky.requests}) == 1
        gaps = [b.at - a.at for a, b in zip(flaky.requests, flaky.requests[1:], strict=False)]
        assert gaps[0] >= BACKOFF * 0.9 and gaps[1] >= 2 * BACKOFF * 0.9, gaps  # 0.2 s, then 0.4 s

        failed = await eventually(lambda: settled(bad["id"], "failed"), timeout=30, what="given up")
        assert failed["attempts"] == MAX_ATTEMPTS and failed["last_status_code"] == 500
        assert failed["last_error"] == "HTTP 500" and failed["next_attempt_at"] is None
        # `*`: every event of the run got a delivery.
        kinds = {d["event_type"] for d in await deliveries(admin, bad["id"], limit=100)}
        assert {"analysis_start", "progress", "completion"} <= kinds
    metrics = (await admin.http.get("/metrics")).text
    assert re.search(r'agentbus_gateway_webhook_deliveries_total\{outcome="delivered"\} [1-9]', metrics)
    assert re.search(r'agentbus_gateway_webhook_deliveries_total\{outcome="failed"\} [1-9]', metrics)
    for hook in (good, bad):
        assert (await admin.http.delete(f"/api/webhooks/{hook['id']}")).status_code == 204


async def test_pending_deliveries_survive_a_gateway_restart(admin: Api, secured: System) -> None:
    port = free_port()  # the receiver is down: connections are refused
    hook = await make_webhook(admin, f"http://127.0.0.1:{port}/hook", ["completion"])
    task = await admin.task(require_approval=False, agent_config={"steps": 1, "step_delay_ms": 0})
    run = await admin.run(task["id"])

    async def tried() -> dict[str, Any] | None:
        rows = await deliveries(admin, hook["id"], status="pending")
        return rows[0] if rows and rows[0]["attempts"] >= 1 else None

    row = await eventually(tried, what="a failed first attempt")
    assert row["last_status_code"] is None and row["last_error"] == "ConnectError"
    await admin.http.aclose()  # no idle connection holds the gateway's graceful shutdown
    secured.gateways[0][0].stop()
    with Receiver(port=port) as receiver:
        secured.restart_gateway()
        secured.wait_ready()
        admin.http = httpx.AsyncClient(base_url=secured.base_url, timeout=30, headers=admin.headers)
        got = await eventually(lambda: receiver.requests, timeout=30, what="the delivery after the restart")
        assert json.loads(got[0].body)["run_id"] == run["id"]

        async def delivered() -> dict[str, Any] | None:
            rows = await deliveries(admin, hook["id"], status="delivered")
            return rows[0] if rows else None

        row = await eventually(delivered, what="marked delivered")
        assert row["attempts"] >= 2 and row["id"] == got[0].headers["x-agentbus-delivery"]


async def test_webhooks_are_for_admins_only(secured: System, admin: Api) -> None:
    keys = {}
    for role in ("viewer", "operator", "approver"):
        r = await admin.http.post("/api/keys", json={"name": f"hooks {role}", "role": role})
        keys[role] = r.json()["key"]
    hook = await make_webhook(admin, "https://hooks.example/agentbus?token=abc", ["failure"])
    body = {"url": "https://hooks.example/x", "events": ["*"], "secret": SECRET}
    async with httpx.AsyncClient(base_url=secured.base_url, timeout=10) as http:
        for key in keys.values():
            auth = {"Authorization": f"Bearer {key}"}
            assert (await http.get("/api/webhooks", headers=auth)).status_code == 403
            assert (await http.get(f"/api/webhooks/{hook['id']}", headers=auth)).status_code == 403
            assert (await http.get(f"/api/webhooks/{hook['id']}/deliveries", headers=auth)).status_code == 403
            assert (await http.post("/api/webhooks", json=body, headers=auth)).status_code == 403
            assert (await http.delete(f"/api/webhooks/{hook['id']}", headers=auth)).status_code == 403
        assert (await http.get("/api/webhooks")).status_code == 401
    one = await admin.http.get(f"/api/webhooks/{hook['id']}")
    assert one.json()["id"] == hook["id"] and "secret" not in one.json()
    assert SECRET not in one.text + (await admin.http.get("/api/webhooks", params={"limit": 100})).text
    assert (await admin.http.delete(f"/api/webhooks/{hook['id']}")).status_code == 204
    assert (await admin.http.get(f"/api/webhooks/{hook['id']}")).status_code == 404
    assert (await admin.http.get(f"/api/webhooks/{hook['id']}/deliveries")).status_code == 404
    assert (await admin.http.delete(f"/api/webhooks/{hook['id']}")).status_code == 404
    # The audit trail: ids, field names and event types; never the secret, nor the URL's token.
    r = await admin.http.get("/api/audit", params={"target_id": hook["id"]})
    entries = r.json()["items"]
    assert [e["action"] for e in entries] == ["webhook.delete", "webhook.create"]
    assert SECRET not in r.text and "token=abc" not in r.text and "hooks.example" not in r.text
    logs = "".join(p.read_text(errors="replace") for p in secured.root.glob("*.log"))
    assert SECRET not in logs and "token=abc" not in logs


HOSTILE = {
    "ftp": {"url": "ftp://h.example/x"},
    "javascript": {"url": "javascript:alert(1)//"},
    "no-host": {"url": "http:///path"},
    "user-and-password": {"url": "https://user:pw@h.example/x"},
    "fragment": {"url": "https://h.example/x#frag"},
    "bad-port": {"url": "https://h.example:99999/x"},
    "port-0": {"url": "https://h.example:0/x"},
    "space": {"url": "https://h.example/a b"},
    "control": {"url": "https://h.example/\x01"},
    "too-long": {"url": "https://h.example/" + "a" * 3000},
    "not-a-string": {"url": 5},
    "no-events": {"events": []},
    "unknown-event": {"events": ["approval_required", "bogus"]},
    "events-not-a-list": {"events": "completion"},
    "short-secret": {"secret": "short"},
    "long-secret": {"secret": "x" * 257},
    "secret-with-space": {"secret": "0123456789 abcdef"},
    "secret-not-a-string": {"secret": 1234567890123456789},
    "unknown-field": {"extra": 1},
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_bodies_are_refused_and_store_nothing(admin: Api, case: str) -> None:
    before = (await admin.http.get("/api/webhooks")).json()["total"]
    body = {"url": "https://h.example/x", "events": ["completion"], "secret": SECRET, **HOSTILE[case]}
    r = await admin.http.post("/api/webhooks", json=body)
    assert r.status_code == 400, (case, r.status_code, r.text)
    assert r.json()["status_code"] == 400 and SECRET not in r.text
    for missing in ("url", "events", "secret"):
        partial = {k: v for k, v in body.items() if k != missing}
        assert (await admin.http.post("/api/webhooks", json=partial)).status_code == 400
    assert (await admin.http.get("/api/webhooks")).json()["total"] == before


async def test_readme_webhooks_section_runs_as_written(secured: System, admin: Api, tmp_path: Path) -> None:
    section = readme_section()
    (tmp_path / "receiver.py").write_text(re.findall(r"```python\n(.*?)```", section, re.S)[0])
    port = secured.base_url.rsplit(":", 1)[1]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    script = "set -euo pipefail\n" + "\n".join(blocks)
    script = script.replace("localhost:8000", f"localhost:{port}").replace("9000", str(free_port()))
    env = {**os.environ, "AGENTBUS_ADMIN_TOKEN": ADMIN}
    out = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert json.loads(lines[0])["events"] == ["approval_required", "completion"]
    received = [line for line in lines if line.startswith(("approval_required ", "completion "))]
    assert [line.split(" ", 2)[:2] for line in received] == [
        ["approval_required", "verified"],
        ["completion", "verified"],
    ]
    page = json.loads(lines[-1])
    assert page["total"] == 2 and {d["status"] for d in page["items"]} == {"delivered"}

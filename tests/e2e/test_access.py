"""Roles on every route and stream of a running system with authentication on: the live
`/openapi.json` is walked with no credentials and with each role, every WebSocket and SSE stream too,
and each answer is checked against the role table; then every log and answer of the run is searched
for the secrets it used."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import ADMIN
from tests.support.system import System

OPEN = {"/health", "/ready", "/openapi.json", "/docs", "/redoc"}
ROLES = ("viewer", "operator", "approver", "admin")
ROOT = Path(__file__).resolve().parents[2]


def may(role: str, method: str, path: str) -> bool:
    """The role table (docs/security.md), written out independently of the gateway's code."""
    if path.startswith(("/api/keys", "/api/audit", "/api/webhooks")):
        return role == "admin"
    if method in ("GET", "HEAD"):
        return True
    if path.endswith("/approve"):
        return role in ("approver", "admin")
    if path.startswith(("/api/tasks", "/api/runs")) or path == "/api/metrics":
        return role in ("operator", "admin")
    return role == "admin"


@pytest.fixture(scope="module")
def keys(secured: System) -> dict[str, str]:
    out = {"admin": ADMIN}
    for role in ("viewer", "operator", "approver"):
        r = httpx.post(
            f"{secured.base_url}/api/keys",
            json={"name": f"e2e {role}", "role": role},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert r.status_code == 201, r.text
        out[role] = r.json()["key"]
    return out


def _concrete(path: str) -> str:
    """A path template with its parameters filled in with ids that do not exist."""
    return re.sub(r"\{[^}]+\}", "nope", path)


def test_every_route_of_the_live_openapi_document_answers_by_the_role_table(
    secured: System, keys: dict[str, str]
) -> None:
    answers: list[str] = []
    with httpx.Client(base_url=secured.base_url, timeout=10) as http:
        document = http.get("/openapi.json")
        assert document.status_code == 200
        spec = document.json()
        assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        checked = 0
        for template, operations in spec["paths"].items():
            path = _concrete(template)
            for method, operation in operations.items():
                method = method.upper()
                is_open = template in OPEN
                assert (operation.get("security") == []) == is_open, (method, template)
                if not is_open:
                    assert {"401", "403"} <= set(operation["responses"]), (method, template)
                body = {} if method in ("POST", "PATCH", "PUT") else None
                r = http.request(method, path, json=body)
                answers.append(r.text)
                if is_open:
                    assert r.status_code not in (401, 403), (method, template, r.text)
                    continue
                assert r.status_code == 401, (method, template, r.status_code, r.text)
                for role in ROLES:
                    r = http.request(
                        method, path, json=body, headers={"Authorization": f"Bearer {keys[role]}"}
                    )
                    answers.append(r.text)
                    if may(role, method, template):
                        assert r.status_code not in (401, 403), (role, method, template, r.text)
                    else:
                        assert r.status_code == 403, (role, method, template, r.status_code, r.text)
                    checked += 1
        assert checked > 100, checked
        # `?token=` is for streams only (a URL is logged by proxies and kept in browser history).
        assert http.get(f"/api/tasks?token={ADMIN}").status_code == 401
    _no_secret_in(secured, keys, answers)


async def _close_code(url: str, headers: dict[str, str] | None = None) -> int | None:
    """The close code the server ends the stream with; None when it stays open for a first frame."""
    async with connect(url, additional_headers=headers or {}, open_timeout=10) as ws:
        try:
            await ws.recv()  # a heartbeat, or the close
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        return None


async def test_every_stream_needs_a_viewer_and_takes_a_query_token(
    secured: System, keys: dict[str, str]
) -> None:
    ws = secured.ws_url
    http = httpx.AsyncClient(timeout=10)
    created = await http.post(
        f"{secured.base_url}/api/tasks",
        json={"name": "streams"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    task = created.json()
    for path in (f"/ws/tasks/{task['id']}", "/ws/stream"):
        assert await _close_code(ws + path) == 4401
        assert await _close_code(ws + path + "?token=wrong") == 4401
        for role in ROLES:
            assert await _close_code(f"{ws}{path}?token={keys[role]}") is None, (path, role)
        assert await _close_code(ws + path, {"Authorization": f"Bearer {keys['viewer']}"}) is None
    assert await _close_code(f"{ws}/ws/runs/nope?token={keys['viewer']}") == 4404  # past the guard
    assert await _close_code(f"{ws}/ws/runs/nope") == 4401

    sse = f"{secured.base_url}/api/runs/nope/events"
    assert (await http.get(sse)).status_code == 401
    assert (await http.get(f"{sse}?token={keys['viewer']}")).status_code == 404  # past the guard
    await http.aclose()


async def test_a_revoked_key_is_closed_out_of_streams_it_opens_next(
    secured: System, keys: dict[str, str]
) -> None:
    http = httpx.AsyncClient(timeout=10)
    created = await http.post(
        f"{secured.base_url}/api/keys",
        json={"name": "short-lived", "role": "viewer"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    made = created.json()
    assert await _close_code(f"{secured.ws_url}/ws/stream?token={made['key']}") is None
    r = await http.delete(
        f"{secured.base_url}/api/keys/{made['id']}", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    await http.aclose()
    assert r.status_code == 204
    assert await _close_code(f"{secured.ws_url}/ws/stream?token={made['key']}") == 4401


def _no_secret_in(system: System, keys: dict[str, str], answers: list[str]) -> None:
    secrets = [ADMIN, *(k for role, k in keys.items() if role != "admin")]
    # A key is ab_<hex id>_<secret>, and the secret (base64url) may hold `_` itself: split twice
    # from the left (splitting once from the right took a short tail like "o" for the secret).
    secrets += [k.split("_", 2)[2] for role, k in keys.items() if role != "admin"]
    ready = httpx.get(f"{system.base_url}/ready").text
    audit = httpx.get(
        f"{system.base_url}/api/audit?limit=100", headers={"Authorization": f"Bearer {ADMIN}"}
    ).text
    texts: dict[str, Any] = {"answers": "\n".join(answers), "/ready": ready, "audit": audit}
    for path in sorted(system.root.glob("*.log")):
        texts[path.name] = path.read_text(errors="replace")
    assert len(texts) > 4, texts.keys()
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret shows in {name}"
    assert json.loads(audit)["total"] > 0


def test_readme_people_in_charge_runs_as_written(secured: System, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    text = readme.split("## People in charge", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert len(blocks) == 4
    port = secured.base_url.rsplit(":", 1)[1]
    script = "set -euo pipefail\n" + "\n".join(blocks).replace("localhost:8000", f"localhost:{port}")
    env = {**os.environ, "AGENTBUS_ADMIN_TOKEN": ADMIN}
    out = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    alice, bot, me, task, run, inbox, refused, approved, audit, anonymous = lines
    assert (alice["role"], bot["role"], me) == (
        "approver",
        "operator",
        {"id": bot["id"], "name": "ops bot", "role": "operator"},
    )
    assert task["approvers"] == ["approver"] and task["approval_by_other"] is True
    assert inbox["total"] == 1 and inbox["items"][0]["run_id"] == run["id"]
    assert refused["status_code"] == 403
    assert approved["approval"]["decided_by"] == {"id": alice["id"], "name": "alice"}
    assert [(e["action"], e["actor"]["name"]) for e in audit["items"]] == [
        ("run.approve", "alice"),
        ("run.create", "ops bot"),
    ]
    assert anonymous["status_code"] == 401

"""Roles on every route and stream of a running system with authentication on: the live
`/openapi.json` is walked with no credentials and with each role, every WebSocket and SSE stream too,
and each answer is checked against the role table. A credential revoked or expired ends the streams
it holds open (on two gateway copies, and the stream cap: test_access_copies.py). Last, everything
the module saw
(answers, stream frames, a run's event log, the audit trail, `/ready`, every log file) is searched for
the secrets it used."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import ADMIN, JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET
from tests.support.access import (
    bearer,
    close_code,
    frames_until_closed,
    make_key,
    sse_status,
    waiting_run,
    with_query,
)
from tests.support.client import Api
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


def make_jwt(role: str, seconds: float = 600, sub: str = "e2e-person") -> str:
    """A JWT as `secured`'s identity provider would sign it."""
    exp = datetime.now(UTC) + timedelta(seconds=seconds)
    claims = {"sub": sub, "role": role, "exp": exp, "iss": JWT_ISSUER, "aud": JWT_AUDIENCE}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def keys(secured: System) -> dict[str, str]:
    """A credential of each role, and a viewer's JWT (`jwt`)."""
    out = {"admin": ADMIN, "jwt": make_jwt("viewer")}
    for role in ("viewer", "operator", "approver"):
        out[role] = make_key(secured, role)["key"]
    return out


@pytest.fixture(scope="module")
def shown() -> list[str]:
    """Everything the gateway answered or streamed in this module, for the secrets search at its end."""
    return []


def _concrete(path: str) -> str:
    """A path template with its parameters filled in with ids that do not exist."""
    return re.sub(r"\{[^}]+\}", "nope", path)


def test_every_route_of_the_live_openapi_document_answers_by_the_role_table(
    secured: System, keys: dict[str, str], shown: list[str]
) -> None:
    answers = shown
    with httpx.Client(base_url=secured.base_url, timeout=10) as http:
        document = http.get("/openapi.json")
        assert document.status_code == 200
        spec = document.json()
        schemes = spec["components"]["securitySchemes"]
        assert schemes["bearer"]["scheme"] == "bearer"
        assert (schemes["query_token"]["in"], schemes["query_token"]["name"]) == ("query", "token")
        sse = spec["paths"]["/api/runs/{run_id}/events"]["get"]
        assert sse["security"] == [{"bearer": []}, {"query_token": []}]
        checked = 0
        for template, operations in spec["paths"].items():
            path = _concrete(template)
            for method, operation in operations.items():
                method = method.upper()
                is_open = template in OPEN
                assert (operation.get("security") == []) == is_open, (method, template)
                responses = operation["responses"]
                if not is_open:
                    assert {"401", "403"} <= set(responses), (method, template)
                    assert "WWW-Authenticate" in responses["401"]["headers"], (method, template)
                if "429" in responses:
                    assert "Retry-After" in responses["429"]["headers"], (method, template)
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


@pytest.fixture
async def admin(secured: System) -> AsyncIterator[Api]:
    api = Api(secured.base_url, secured.ws_url, token=ADMIN)
    yield api
    await api.close()


async def test_every_stream_needs_a_viewer_and_takes_a_query_token(
    secured: System, keys: dict[str, str], shown: list[str], admin: Api
) -> None:
    """Each stream with no or a wrong credential (4401 / 401), and with each role's credential and a
    JWT, both as `?token=` and as the `Authorization` header (open)."""
    run = await waiting_run(admin)
    ws, http = secured.ws_url, admin.http
    for path in (f"/ws/runs/{run['id']}?since=0", f"/ws/tasks/{run['task_id']}", "/ws/stream"):
        assert await close_code(ws + path, shown) == 4401, path
        assert await close_code(with_query(ws + path, token="wrong"), shown) == 4401, path
        for who, credential in keys.items():
            assert await close_code(with_query(ws + path, token=credential), shown) is None, (path, who)
            assert await close_code(ws + path, shown, bearer(credential)) is None, (path, who)
    assert await close_code(f"{ws}/ws/runs/nope?token={keys['viewer']}", shown) == 4404  # past the guard
    assert await close_code(f"{ws}/ws/runs/nope", shown) == 4401

    anonymous = httpx.AsyncClient(base_url=secured.base_url, timeout=10)
    sse = f"/api/runs/{run['id']}/events"
    assert await sse_status(anonymous, sse, shown) == 401
    assert await sse_status(anonymous, f"{sse}?token=wrong", shown) == 401
    for who, credential in keys.items():
        assert await sse_status(anonymous, f"{sse}?token={credential}", shown) == 200, who
        assert await sse_status(anonymous, sse, shown, bearer(credential)) == 200, who
    assert await sse_status(anonymous, f"/api/runs/nope/events?token={keys['viewer']}", shown) == 404
    await anonymous.aclose()

    # The run goes on to its end; its event log is searched for secrets too.
    r = await http.post(f"/api/runs/{run['id']}/approve", json={"approved": True})
    assert r.status_code == 200, r.text
    await admin.wait_status(run["id"], "completed")
    logs = await http.get(f"/api/runs/{run['id']}/logs", params={"limit": 1000})
    assert logs.status_code == 200 and logs.json()["items"], logs.text
    shown.append(logs.text)


async def test_a_revoked_key_ends_the_streams_it_holds_open(
    secured: System, shown: list[str], admin: Api
) -> None:
    run = await waiting_run(admin)
    made = make_key(secured, "viewer")
    key = made["key"]
    sse_url = f"{secured.base_url}/api/runs/{run['id']}/events"
    async with (
        connect(f"{secured.ws_url}/ws/stream?token={key}", open_timeout=10) as ws,
        httpx.AsyncClient(timeout=10) as http,
        http.stream("GET", sse_url, headers=bearer(key)) as sse,
    ):
        shown.append(str(await ws.recv()))  # open: a heartbeat
        assert sse.status_code == 200
        lines = sse.aiter_lines()
        async for line in lines:
            shown.append(line)
            if line.startswith("data:"):
                break  # open: the run's first event

        async def sse_rest() -> list[str]:
            return [line async for line in lines]

        assert (await admin.http.delete(f"/api/keys/{made['id']}")).status_code == 204
        revoked_at = time.monotonic()
        (code, reason), rest = await asyncio.wait_for(
            asyncio.gather(frames_until_closed(ws, shown), sse_rest()), timeout=3
        )
        assert time.monotonic() - revoked_at < 2.0
    shown.extend(rest)
    assert (code, reason) == (4401, "this key was revoked")
    assert any("credentials no longer accepted (this key was revoked)" in line for line in rest), rest
    # And it opens no stream again.
    assert await close_code(f"{secured.ws_url}/ws/stream?token={key}", shown) == 4401
    assert await sse_status(admin.http, sse_url, shown, bearer(key)) == 401


async def test_an_expired_key_or_jwt_ends_the_streams_it_holds_open(
    secured: System, shown: list[str]
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=2)
    key = make_key(secured, "viewer", expires_at=soon.isoformat())["key"]
    token = make_jwt("viewer", seconds=1, sub="short-lived")  # refused once 5 s of clock leeway pass
    async with (
        connect(f"{secured.ws_url}/ws/stream?token={key}", open_timeout=10) as by_key,
        connect(f"{secured.ws_url}/ws/stream", additional_headers=bearer(token), open_timeout=10) as by_jwt,
    ):
        ended = await asyncio.wait_for(
            asyncio.gather(frames_until_closed(by_key, shown), frames_until_closed(by_jwt, shown)), 20
        )
    assert ended == [(4401, "this key has expired"), (4401, "the token has expired")]


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


def test_no_secret_shows_in_anything_the_gateway_answered_streamed_or_logged(
    secured: System, keys: dict[str, str], shown: list[str]
) -> None:
    """The admin token, each key and its secret part, the JWT secret and a JWT (and its signature)
    never show in an answer, a stream frame, a run's event log, `/ready`, the audit trail or a log."""
    secrets = [ADMIN, JWT_SECRET, *(k for who, k in keys.items() if who != "admin")]
    # A key is ab_<hex id>_<secret>, and the secret (base64url) may hold `_` itself: split twice
    # from the left (splitting once from the right took a short tail like "o" for the secret).
    secrets += [k.split("_", 2)[2] for k in keys.values() if k.startswith("ab_")]
    secrets += [keys["jwt"].rsplit(".", 1)[1]]
    assert len(secrets) == 10 and all(len(s) >= 20 for s in secrets), secrets
    ready = httpx.get(f"{secured.base_url}/ready").text
    audit = httpx.get(f"{secured.base_url}/api/audit?limit=100", headers=bearer(ADMIN)).text
    texts: dict[str, Any] = {"answers and frames": "\n".join(shown), "/ready": ready, "audit": audit}
    for path in sorted(secured.root.glob("*.log")):
        texts[path.name] = path.read_text(errors="replace")
    assert len(texts) > 4, texts.keys()
    # What was searched holds what the module did: stream frames and a run's event log among them.
    assert '"event_type":"heartbeat"' in texts["answers and frames"].replace(" ", "")
    assert '"event_type":"completion"' in texts["answers and frames"].replace(" ", "")
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret shows in {name}"
    assert json.loads(audit)["total"] > 0

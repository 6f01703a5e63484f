"""Roles on every route and stream of a running system with authentication on: the live
`/openapi.json` is walked with no credentials and with each role, every WebSocket and SSE stream too,
and each answer is checked against the role table. A credential revoked or expired ends the streams
it holds open; each identity holds at most GATEWAY_MAX_STREAMS. Last, everything the module saw
(answers, stream frames, a run's event log, the audit trail, `/ready`, every log file) is searched for
the secrets it used."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import ADMIN, JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET
from tests.support.client import Api
from tests.support.system import System, start_system
from tests.support.waiting import eventually

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


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def make_key(system: System, role: str, **extra: Any) -> dict[str, Any]:
    r = httpx.post(
        f"{system.base_url}/api/keys",
        json={"name": f"e2e {role}", "role": role, **extra},
        headers=bearer(ADMIN),
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


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


def _with(path: str, **query: str) -> str:
    return path + ("&" if "?" in path else "?") + "&".join(f"{k}={v}" for k, v in query.items())


async def _frames_until_closed(ws: ClientConnection, shown: list[str]) -> tuple[int | None, str]:
    """Read (and keep) frames until the server closes the stream: its close code and reason."""
    try:
        while True:
            shown.append(str(await ws.recv()))
    except ConnectionClosed as closed:
        return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, "")


async def _close_code(url: str, shown: list[str], headers: dict[str, str] | None = None) -> int | None:
    """The close code the server ends the stream with; None when it stays open for a first frame."""
    async with connect(url, additional_headers=headers or {}, open_timeout=10) as ws:
        try:
            shown.append(str(await ws.recv()))  # a heartbeat or an event, or the close
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        return None


async def _sse_status(
    http: httpx.AsyncClient, url: str, shown: list[str], headers: dict[str, str] | None = None
) -> int:
    """The status an SSE request is answered with; when 200, its stream is read up to its first event."""
    async with http.stream("GET", url, headers=headers or {}) as r:
        if r.status_code != 200:
            shown.append((await r.aread()).decode())
            if r.status_code == 401:
                assert r.headers["www-authenticate"] == "Bearer"
            return r.status_code
        async for line in r.aiter_lines():
            shown.append(line)
            if line.startswith("data:"):
                break
        return r.status_code


async def _waiting_run(api: Api) -> dict[str, Any]:
    """A run that waits for a decision (for ten minutes): its streams stay open."""
    task = await api.task(require_approval=True, approval_timeout_s=600)
    run = await api.run(task["id"])
    return await api.wait_status(run["id"], "awaiting_approval")


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
    run = await _waiting_run(admin)
    ws, http = secured.ws_url, admin.http
    for path in (f"/ws/runs/{run['id']}?since=0", f"/ws/tasks/{run['task_id']}", "/ws/stream"):
        assert await _close_code(ws + path, shown) == 4401, path
        assert await _close_code(_with(ws + path, token="wrong"), shown) == 4401, path
        for who, credential in keys.items():
            assert await _close_code(_with(ws + path, token=credential), shown) is None, (path, who)
            assert await _close_code(ws + path, shown, bearer(credential)) is None, (path, who)
    assert await _close_code(f"{ws}/ws/runs/nope?token={keys['viewer']}", shown) == 4404  # past the guard
    assert await _close_code(f"{ws}/ws/runs/nope", shown) == 4401

    anonymous = httpx.AsyncClient(base_url=secured.base_url, timeout=10)
    sse = f"/api/runs/{run['id']}/events"
    assert await _sse_status(anonymous, sse, shown) == 401
    assert await _sse_status(anonymous, f"{sse}?token=wrong", shown) == 401
    for who, credential in keys.items():
        assert await _sse_status(anonymous, f"{sse}?token={credential}", shown) == 200, who
        assert await _sse_status(anonymous, sse, shown, bearer(credential)) == 200, who
    assert await _sse_status(anonymous, f"/api/runs/nope/events?token={keys['viewer']}", shown) == 404
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
    run = await _waiting_run(admin)
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
            asyncio.gather(_frames_until_closed(ws, shown), sse_rest()), timeout=3
        )
        assert time.monotonic() - revoked_at < 2.0
    shown.extend(rest)
    assert (code, reason) == (4401, "this key was revoked")
    assert any("credentials no longer accepted (this key was revoked)" in line for line in rest), rest
    # And it opens no stream again.
    assert await _close_code(f"{secured.ws_url}/ws/stream?token={key}", shown) == 4401
    assert await _sse_status(admin.http, sse_url, shown, bearer(key)) == 401


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
            asyncio.gather(_frames_until_closed(by_key, shown), _frames_until_closed(by_jwt, shown)), 20
        )
    assert ended == [(4401, "this key has expired"), (4401, "the token has expired")]


@pytest.fixture(scope="module")
def capped() -> Iterator[System]:
    """A system with authentication on, two gateway copies, where each identity may hold two streams
    open on each copy."""
    system = start_system(
        gateways=2, AGENTBUS_ADMIN_TOKEN=ADMIN, GATEWAY_MAX_STREAMS="2", WS_HEARTBEAT_S="0.5"
    )
    try:
        yield system
    finally:
        system.stop()


async def test_each_identity_holds_at_most_max_streams(capped: System, shown: list[str]) -> None:
    admin = Api(capped.base_url, capped.ws_url, token=ADMIN)
    run = await _waiting_run(admin)
    mine, other = make_key(capped, "viewer")["key"], make_key(capped, "viewer")["key"]
    ws, sse = capped.ws_url, f"/api/runs/{run['id']}/events"

    async def opens_ws() -> bool:
        return await _close_code(f"{ws}/ws/stream?token={mine}", shown) is None

    async def opens_sse() -> bool:
        return await _sse_status(admin.http, sse, shown, bearer(mine)) == 200

    async with (
        connect(f"{ws}/ws/tasks/{run['task_id']}?token={mine}", open_timeout=10) as first,
        httpx.AsyncClient(base_url=capped.base_url, timeout=10) as http,
        http.stream("GET", sse, headers=bearer(mine)) as second,
    ):
        shown.append(str(await first.recv()))
        assert second.status_code == 200
        lines = second.aiter_lines()  # kept: a reader dropped closes the response
        async for line in lines:  # up to its first event: it holds its slot
            shown.append(line)
            if line.startswith("data:"):
                break
        # Both slots are held: a third stream is refused, whichever kind; another identity has its own.
        for path in ("/ws/stream", f"/ws/runs/{run['id']}", f"/ws/tasks/{run['task_id']}"):
            async with connect(f"{ws}{path}?token={mine}", open_timeout=10) as third:
                code, reason = await _frames_until_closed(third, shown)
            assert code == 4429 and "too many open streams" in reason, (path, code, reason)
        refused = await admin.http.get(sse, headers=bearer(mine))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1, refused.text
        assert "too many open streams" in refused.json()["detail"]
        assert await _close_code(f"{ws}/ws/stream?token={other}", shown) is None
        await first.close()
        await eventually(opens_ws, 10, "a WebSocket frees its slot when it closes")
    # The SSE stream has ended too: both slots free again.
    await eventually(opens_sse, 10, "an SSE stream frees its slot when it ends")

    async def two_open() -> bool:
        async with (
            connect(f"{ws}/ws/stream?token={mine}", open_timeout=10) as one,
            connect(f"{ws}/ws/stream?token={mine}", open_timeout=10) as two,
        ):
            shown.extend([str(await one.recv()), str(await two.recv())])
            return True

    await eventually(two_open, 10, "both slots free again", retry_on=(ConnectionClosed,))
    await admin.close()


async def test_a_key_revoked_on_one_copy_ends_its_streams_on_another(
    capped: System, shown: list[str]
) -> None:
    made = make_key(capped, "viewer")
    other_ws = capped.url_of(1)[1]
    async with (
        connect(f"{other_ws}/ws/stream?token={made['key']}", open_timeout=10) as ws,
        httpx.AsyncClient(base_url=capped.base_url, headers=bearer(ADMIN)) as first_copy,
    ):
        shown.append(str(await ws.recv()))  # open on the second copy: a heartbeat
        r = await first_copy.delete(f"/api/keys/{made['id']}")
        assert r.status_code == 204
        revoked_at = time.monotonic()
        code, reason = await asyncio.wait_for(_frames_until_closed(ws, shown), timeout=3)
        assert time.monotonic() - revoked_at < 2.0
    assert (code, reason) == (4401, "this key was revoked")


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

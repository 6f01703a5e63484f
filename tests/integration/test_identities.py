"""Identities and roles on the gateway: the admin token, API keys, JWTs, the role table, the four-eyes
rule and approvers, rate limits, and the audit trail (a real NATS, both databases)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from agentbus.common.db import make_engine
from agentbus.gateway.app import create_app
from agentbus.gateway.identity import key_hash
from agentbus.gateway.settings import Settings
from agentbus.gateway.store.tables import api_keys
from tests.integration.conftest import LOCAL
from tests.support.fake_runner import FakeRunnerInfo
from tests.support.servers import NatsServer
from tests.support.waiting import eventually

ADMIN = "admin-token-for-tests-0123456789"
HS_SECRET = "a-shared-secret-of-at-least-32-bytes!!"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def settings(own_nats, database_url: str, runner_info) -> Settings:
    return Settings(
        nats_url=own_nats.url,
        database_url=database_url,
        request_timeout_s=0.5,
        admin_token=ADMIN,
        jwt_key=HS_SECRET,
        jwt_algorithms=("HS256",),
        jwt_audience="agentbus",
        jwt_issuer="https://idp.test",
        write_rate=1000,
        write_burst=1000,
        denied_audit_per_minute=5,
    )


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(app=create_app(settings), base_url=LOCAL) as c:
        yield c


async def make_key(api: AsyncTestClient, role: str, **extra: Any) -> dict[str, Any]:
    r = await api.post(
        "/api/keys", json={"name": f"{role} key", "role": role, **extra}, headers=bearer(ADMIN)
    )
    assert r.status_code == 201, r.text
    return r.json()


async def test_no_or_unknown_credentials_get_401_and_open_routes_stay_open(api: AsyncTestClient) -> None:
    for headers in (
        {},
        bearer("wrong"),
        bearer("ab_" + "0" * 32 + "_" + "x" * 43),
        {"Authorization": "Basic eA=="},
    ):
        r = await api.get("/api/tasks", headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["status_code"] == 401 and r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
    for path in ("/health", "/openapi.json", "/docs", "/redoc", "/", "/ui/app.js"):
        r = await api.get(path)
        assert r.status_code == 200, path
        assert ADMIN not in r.text
    r = await api.get("/api/me", headers=bearer(ADMIN))
    assert r.json() == {"id": "admin", "name": "admin (AGENTBUS_ADMIN_TOKEN)", "role": "admin"}


async def test_the_role_table(api: AsyncTestClient) -> None:
    keys = {role: (await make_key(api, role))["key"] for role in ("viewer", "operator", "approver")}
    keys["admin"] = ADMIN
    task = (await api.post("/api/tasks", json={"name": "t"}, headers=bearer(ADMIN))).json()
    expected = [
        # (method, path, body), {role: status}
        (("GET", "/api/tasks", None), dict(viewer=200, operator=200, approver=200, admin=200)),
        (("POST", "/api/tasks", {"name": "x"}), dict(viewer=403, operator=201, approver=403, admin=201)),
        (
            ("PATCH", f"/api/tasks/{task['id']}", {"name": "y"}),
            dict(viewer=403, operator=200, approver=403, admin=200),
        ),
        (("GET", "/api/keys", None), dict(viewer=403, operator=403, approver=403, admin=200)),
        (("GET", "/api/audit", None), dict(viewer=403, operator=403, approver=403, admin=200)),
        (
            ("POST", "/api/runs/nope/approve", {"approved": True}),
            dict(viewer=403, operator=403, approver=404, admin=404),
        ),
        (("POST", "/api/runs/nope/cancel", None), dict(viewer=403, operator=404, approver=403, admin=404)),
        (("GET", "/api/me", None), dict(viewer=200, operator=200, approver=200, admin=200)),
    ]
    for (method, path, body), answers in expected:
        for role, status in answers.items():
            r = await api.request(method, path, json=body, headers=bearer(keys[role]))
            assert r.status_code == status, (method, path, role, r.text)
            if status == 403:
                assert "role" in r.json()["detail"]
    me = (await api.get("/api/me", headers=bearer(keys["operator"]))).json()
    assert me["role"] == "operator" and me["name"] == "operator key"


async def test_a_key_is_shown_once_stored_as_a_hash_and_revoked_everywhere(
    api: AsyncTestClient, settings: Settings
) -> None:
    made = await make_key(api, "viewer")
    assert made["key"].startswith("ab_") and made["role"] == "viewer" and made["expires_at"] is None
    listed = (await api.get("/api/keys", headers=bearer(ADMIN))).json()
    assert [k["id"] for k in listed["items"]] == [made["id"]]
    assert "key" not in listed["items"][0] and made["key"] not in json.dumps(listed)
    # A second gateway copy on the same database learns of the revocation within a second.
    async with AsyncTestClient(app=create_app(settings), base_url=LOCAL) as other:
        assert (await other.get("/api/tasks", headers=bearer(made["key"]))).status_code == 200
        assert (await api.delete(f"/api/keys/{made['id']}", headers=bearer(ADMIN))).status_code == 204
        revoked_at = time.monotonic()

        async def refused_there() -> bool:
            return (await other.get("/api/tasks", headers=bearer(made["key"]))).status_code == 401

        await eventually(refused_there, timeout=1.0, what="the other copy refuses the revoked key")
        assert time.monotonic() - revoked_at < 1.0
    assert (await api.get("/api/tasks", headers=bearer(made["key"]))).status_code == 401
    assert (await api.delete(f"/api/keys/{made['id']}", headers=bearer(ADMIN))).status_code == 404
    shown = (await api.get("/api/keys?revoked=true", headers=bearer(ADMIN))).json()["items"]
    assert shown[0]["revoked_at"] is not None
    # Revoked once, recorded once (the second DELETE, a 404, left nothing).
    revokes = (await api.get("/api/audit?action=key.revoke", headers=bearer(ADMIN))).json()["items"]
    assert [(e["actor"]["id"], e["target_type"], e["target_id"]) for e in revokes] == [
        ("admin", "key", made["id"])
    ]


async def test_a_key_row_holds_only_a_salted_hash_of_its_secret(
    api: AsyncTestClient, database_url: str
) -> None:
    made = await make_key(api, "operator")
    prefix, key_id, secret = made["key"].split("_", 2)  # ab_<id>_<secret>; the secret may hold "_"
    assert (prefix, key_id) == ("ab", made["id"])
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).one()
    finally:
        await engine.dispose()
    stored = row._asdict()
    assert stored["hash"] == key_hash(stored["salt"], secret)
    assert len(bytes.fromhex(stored["salt"])) == 16  # a salt of its own, 128 random bits
    other = await make_key(api, "operator")
    assert other["key"] != made["key"]
    # Neither the secret nor the key is anywhere in the row, in any column.
    every_value = repr(tuple(row))
    assert secret not in every_value and made["key"] not in every_value


async def test_key_expiry_and_bad_key_bodies(api: AsyncTestClient) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=2)
    made = await make_key(api, "viewer", expires_at=soon.isoformat())
    assert (await api.get("/api/tasks", headers=bearer(made["key"]))).status_code == 200

    async def expired() -> bool:
        return (await api.get("/api/tasks", headers=bearer(made["key"]))).status_code == 401

    await eventually(expired, timeout=10, what="the key expires")
    for body in (
        {"name": "x", "role": "root"},
        {"name": "", "role": "viewer"},
        {"name": "x" * 101, "role": "viewer"},
        {"name": "x", "role": "viewer", "expires_at": "2000-01-01T00:00:00Z"},
        {"name": "x", "role": "viewer", "expires_at": "2100-01-01T00:00:00"},
        {"name": "x", "role": "viewer", "key": "chosen"},
    ):
        r = await api.post("/api/keys", json=body, headers=bearer(ADMIN))
        assert r.status_code == 400, (body, r.text)


def _jwt(**claims: Any) -> str:
    base = {
        "sub": "alice",
        "name": "Alice",
        "role": "approver",
        "aud": "agentbus",
        "iss": "https://idp.test",
        "exp": datetime.now(UTC) + timedelta(minutes=5),
    }
    return jwt.encode({**base, **claims}, HS_SECRET, algorithm="HS256")


async def test_jwt_bearer_tokens(api: AsyncTestClient) -> None:
    r = await api.get("/api/me", headers=bearer(_jwt()))
    assert r.json() == {"id": "jwt:alice", "name": "Alice", "role": "approver"}
    r = await api.get("/api/me", headers=bearer(_jwt(role=["staff", "operator"])))
    assert r.json()["role"] == "operator"
    past = datetime.now(UTC) - timedelta(minutes=5)
    for token in (
        _jwt(exp=past),
        _jwt(aud="someone-else"),
        _jwt(iss="https://evil.test"),
        _jwt(role="root"),
        jwt.encode({"sub": "a", "role": "admin", "aud": "agentbus", "iss": "https://idp.test"}, HS_SECRET),
        jwt.encode(
            {"sub": "a", "role": "admin", "aud": "agentbus", "exp": past},
            "another-secret-of-32-bytes-length!",
        ),
    ):
        r = await api.get("/api/me", headers=bearer(token))
        assert r.status_code == 401, r.text
        assert token not in r.text


@pytest.fixture(scope="module")
def jwks() -> Iterator[tuple[str, Any]]:
    """A JWKS endpoint on loopback, and the private key whose public half it publishes."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    body = json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Keys(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json", private
    server.shutdown()


async def test_jwt_verified_against_a_jwks(own_nats, database_url: str, runner_info, jwks) -> None:
    url, private = jwks
    settings = Settings(
        nats_url=own_nats.url,
        database_url=database_url,
        jwt_jwks_url=url,
        jwt_issuer="https://idp.test",
        jwt_audience="agentbus",
        jwt_role_claim="agentbus_role",
    )
    exp = datetime.now(UTC) + timedelta(minutes=5)
    claims = {"iss": "https://idp.test", "aud": "agentbus"}
    good = jwt.encode(
        {"sub": "bob", "agentbus_role": "viewer", "exp": exp, **claims},
        private,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        {"sub": "bob", "agentbus_role": "admin", "exp": exp, **claims},
        other,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    hs_confusion = jwt.encode(
        {"sub": "bob", "agentbus_role": "admin", "exp": exp, **claims}, pem[:64], algorithm="HS256"
    )
    async with AsyncTestClient(app=create_app(settings), base_url=LOCAL) as api:
        assert (await api.get("/api/me", headers=bearer(good))).json()["role"] == "viewer"
        assert (await api.post("/api/tasks", json={"name": "x"}, headers=bearer(good))).status_code == 403
        for token in (forged, hs_confusion):
            assert (await api.get("/api/me", headers=bearer(token))).status_code == 401


async def test_writes_are_rate_limited_per_identity(own_nats, database_url: str, runner_info) -> None:
    settings = Settings(
        nats_url=own_nats.url, database_url=database_url, admin_token=ADMIN, write_rate=0.5, write_burst=2
    )
    async with AsyncTestClient(app=create_app(settings), base_url=LOCAL) as api:
        operator = (await make_key(api, "operator"))["key"]
        for _ in range(2):
            assert (
                await api.post("/api/tasks", json={"name": "x"}, headers=bearer(operator))
            ).status_code == 201
        r = await api.post("/api/tasks", json={"name": "x"}, headers=bearer(operator))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
        # Reads are not limited, and another identity has its own budget.
        assert (await api.get("/api/tasks", headers=bearer(operator))).status_code == 200
        other = (await make_key(api, "operator"))["key"]
        assert (await api.post("/api/tasks", json={"name": "x"}, headers=bearer(other))).status_code == 201


async def test_approvers_and_the_four_eyes_rule(api: AsyncTestClient) -> None:
    """A decision by someone the task does not allow is 403 whatever the run's state; an allowed one
    reaches the state check (409 here: the run is not waiting)."""
    alice = await make_key(api, "approver")
    bob = await make_key(api, "approver")
    operator = await make_key(api, "operator")
    task = (
        await api.post(
            "/api/tasks",
            json={"name": "t", "approvers": [alice["id"], "admin"]},
            headers=bearer(operator["key"]),
        )
    ).json()
    run = (await api.post("/api/runs", json={"task_id": task["id"]}, headers=bearer(operator["key"]))).json()
    decide = f"/api/runs/{run['id']}/approve"
    r = await api.post(decide, json={"approved": True}, headers=bearer(bob["key"]))
    assert r.status_code == 403 and "approvers" in r.json()["detail"]
    assert (await api.post(decide, json={"approved": True}, headers=bearer(alice["key"]))).status_code == 409
    assert (await api.post(decide, json={"approved": True}, headers=bearer(ADMIN))).status_code == 409

    four_eyes = (
        await api.post("/api/tasks", json={"name": "4e", "approval_by_other": True}, headers=bearer(ADMIN))
    ).json()
    mine = (await api.post("/api/runs", json={"task_id": four_eyes["id"]}, headers=bearer(ADMIN))).json()
    r = await api.post(f"/api/runs/{mine['id']}/approve", json={"approved": True}, headers=bearer(ADMIN))
    assert r.status_code == 403 and "approval_by_other" in r.json()["detail"]
    # Rejecting one's own run stays possible (they could cancel it anyway); another person may approve.
    assert (
        await api.post(f"/api/runs/{mine['id']}/approve", json={"approved": False}, headers=bearer(ADMIN))
    ).status_code == 409
    assert (
        await api.post(
            f"/api/runs/{mine['id']}/approve", json={"approved": True}, headers=bearer(alice["key"])
        )
    ).status_code == 409
    stored = (await api.get(f"/api/runs/{mine['id']}", headers=bearer(ADMIN))).json()
    assert stored["approval"] is None


async def test_approvers_entries_must_be_able_to_match_someone(api: AsyncTestClient) -> None:
    """An entry that is no role name, no key id and no JWT identity would match no one: refused,
    named, on create and on update; the three kinds are taken."""
    good = ["approver", "admin", "0123456789abcdef0123456789abcdef", "jwt:alice"]
    task = await api.post("/api/tasks", json={"name": "t", "approvers": good}, headers=bearer(ADMIN))
    assert task.status_code == 201 and task.json()["approvers"] == good, task.text
    path = f"/api/tasks/{task.json()['id']}"
    for bad in (
        "aprover",
        "Approver",
        "0123456789ABCDEF0123456789ABCDEF",
        "0123abc",
        "jwt:",
        "alice",
        " admin",
        "admin\n",
    ):
        made = await api.post(
            "/api/tasks", json={"name": "t", "approvers": ["admin", bad]}, headers=bearer(ADMIN)
        )
        assert made.status_code == 400, (bad, made.text)
        assert repr(bad) in made.json()["detail"] and made.json()["extra"][0]["key"] == "approvers"
        changed = await api.patch(path, json={"approvers": [bad]}, headers=bearer(ADMIN))
        assert changed.status_code == 400 and repr(bad) in changed.json()["detail"], (bad, changed.text)
    assert (await api.get(path, headers=bearer(ADMIN))).json()["approvers"] == good
    # A JWT identity listed decides; another one with the same role does not.
    await api.patch(path, json={"approvers": ["jwt:alice"]}, headers=bearer(ADMIN))
    run = (await api.post("/api/runs", json={"task_id": task.json()["id"]}, headers=bearer(ADMIN))).json()
    decide = f"/api/runs/{run['id']}/approve"
    assert (await api.post(decide, json={"approved": True}, headers=bearer(_jwt()))).status_code == 409
    r = await api.post(decide, json={"approved": True}, headers=bearer(_jwt(sub="bob")))
    assert r.status_code == 403 and "approvers" in r.json()["detail"]


async def test_refused_decisions_leave_one_auth_denied_entry_and_change_nothing(api: AsyncTestClient) -> None:
    """A 403 of the decision rules (a task's approvers, the four-eyes rule) is recorded like the
    guard's role 403s: one `auth.denied` entry each, with the status and the reason."""
    viewer = await make_key(api, "viewer")
    alice = await make_key(api, "admin")  # may start runs and decide on them
    bob = await make_key(api, "approver")

    async def denied() -> list[dict[str, Any]]:
        r = await api.get("/api/audit?action=auth.denied&limit=100", headers=bearer(ADMIN))
        return r.json()["items"]  # type: ignore[no-any-return]

    r = await api.post("/api/tasks", json={"name": "x"}, headers=bearer(viewer["key"]))
    assert r.status_code == 403
    [role] = await denied()
    assert role["actor"] == {"id": viewer["id"], "name": "viewer key", "role": "viewer"}
    assert role["detail"]["status"] == 403 and role["detail"]["reason"] == r.json()["detail"]
    assert (role["detail"]["method"], role["detail"]["path"]) == ("POST", "/api/tasks")

    task = (
        await api.post(
            "/api/tasks",
            json={"name": "t", "approvers": [alice["id"]], "approval_by_other": True},
            headers=bearer(ADMIN),
        )
    ).json()
    run = (await api.post("/api/runs", json={"task_id": task["id"]}, headers=bearer(alice["key"]))).json()
    decide = f"/api/runs/{run['id']}/approve"
    before = (await api.get(f"/api/runs/{run['id']}", headers=bearer(ADMIN))).json()
    trail = (await api.get("/api/audit?limit=100", headers=bearer(ADMIN))).json()["total"]

    # Not one of the approvers.
    r = await api.post(decide, json={"approved": False}, headers=bearer(bob["key"]))
    assert r.status_code == 403
    entry = (await denied())[0]
    assert entry["actor"]["id"] == bob["id"] and entry["target_type"] == "route"
    assert entry["detail"]["status"] == 403 and entry["detail"]["reason"] == r.json()["detail"]
    assert "approvers" in entry["detail"]["reason"]
    assert (entry["detail"]["method"], entry["detail"]["path"]) == ("POST", decide)
    # The one who started it approving it: the four-eyes rule.
    r = await api.post(decide, json={"approved": True}, headers=bearer(alice["key"]))
    assert r.status_code == 403
    entry = (await denied())[0]
    assert entry["actor"]["id"] == alice["id"] and entry["detail"]["status"] == 403
    assert (
        entry["detail"]["reason"] == r.json()["detail"] and "approval_by_other" in entry["detail"]["reason"]
    )

    # Two refusals, two entries, and nothing else: the run, its approvals and the rest of the trail.
    assert len(await denied()) == 3
    assert (await api.get("/api/audit?limit=100", headers=bearer(ADMIN))).json()["total"] == trail + 2
    assert (await api.get(f"/api/runs/{run['id']}", headers=bearer(ADMIN))).json() == before
    about_run = (await api.get(f"/api/audit?target_id={run['id']}", headers=bearer(ADMIN))).json()
    assert [e["action"] for e in about_run["items"]] == ["run.create"]
    approvals = (await api.get(f"/api/approvals?task_id={task['id']}", headers=bearer(ADMIN))).json()
    assert approvals["total"] == 0


async def test_the_audit_trail(api: AsyncTestClient) -> None:
    operator = await make_key(api, "operator")
    task = (await api.post("/api/tasks", json={"name": "audited"}, headers=bearer(operator["key"]))).json()
    await api.patch(f"/api/tasks/{task['id']}", json={"description": "d"}, headers=bearer(operator["key"]))
    run = (await api.post("/api/runs", json={"task_id": task["id"]}, headers=bearer(operator["key"]))).json()
    await api.patch(f"/api/runs/{run['id']}", json={"labels": {"a": "b"}}, headers=bearer(operator["key"]))
    assert (await api.delete(f"/api/tasks/{task['id']}", headers=bearer(operator["key"]))).status_code == 204
    for _ in range(8):  # a flood of refusals: at most AUDIT_DENIED_PER_MINUTE (5) entries
        await api.get("/api/tasks", headers=bearer("nope"))

    page = (await api.get(f"/api/audit?target_id={task['id']}", headers=bearer(ADMIN))).json()
    actions = [e["action"] for e in page["items"]]
    assert actions == ["task.delete", "task.update", "task.create"], actions  # newest first
    entry = page["items"][-1]
    assert entry["actor"] == {"id": operator["id"], "name": "operator key", "role": "operator"}
    assert entry["target_type"] == "task" and entry["at"]
    runs = (await api.get(f"/api/audit?target_id={run['id']}", headers=bearer(ADMIN))).json()
    assert [e["action"] for e in runs["items"]] == ["run.update", "run.create"]  # kept after the delete

    keys = (await api.get("/api/audit?action=key.create", headers=bearer(ADMIN))).json()
    assert keys["total"] == 1 and keys["items"][0]["actor"]["id"] == "admin"
    denied = (await api.get("/api/audit?action=auth.denied", headers=bearer(ADMIN))).json()
    assert denied["total"] == 5, denied
    assert denied["items"][0]["detail"]["status"] == 401 and denied["items"][0]["actor"]["id"] == "unknown"

    everything = json.dumps((await api.get("/api/audit?limit=100", headers=bearer(ADMIN))).json())
    for secret in (ADMIN, operator["key"], operator["key"].split("_", 2)[2]):
        assert secret not in everything
    # No route changes or deletes an entry.
    for method in ("POST", "PATCH", "DELETE", "PUT"):
        r = await api.request(method, "/api/audit", json={}, headers=bearer(ADMIN))
        assert r.status_code == 405, (method, r.status_code)
    # Paging by cursor walks every entry once.
    seen, cursor = [], None
    while True:
        url = "/api/audit?limit=3" + (f"&cursor={cursor}" if cursor else "")
        got = (await api.get(url, headers=bearer(ADMIN))).json()
        seen += [e["id"] for e in got["items"]]
        assert all(isinstance(e["id"], str) for e in got["items"])  # ids are opaque strings
        cursor = got["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == got["total"]
    for bad in ("?since=yesterday", "?limit=0", "?cursor=garbage", "?skip=-1"):
        assert (await api.get("/api/audit" + bad, headers=bearer(ADMIN))).status_code == 400, bad


async def test_a_cancel_the_broker_does_not_store_leaves_no_entry(tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    """`run.cancel` is written once the cancel is stored: with the broker away the cancel is a 503,
    and the trail says nothing happened, as nothing did."""
    server = NatsServer(str(tmp_path / "nats")).start()
    discovery = FakeRunnerInfo(server.url).start()
    try:
        settings = Settings(nats_url=server.url, database_url=database_url, request_timeout_s=0.5)
        async with AsyncTestClient(app=create_app(settings), base_url=LOCAL) as api:
            task = (await api.post("/api/tasks", json={"name": "t"})).json()
            run = (await api.post("/api/runs", json={"task_id": task["id"]})).json()
            server.stop()
            r = await api.post(f"/api/runs/{run['id']}/cancel")
            assert r.status_code == 503, r.text
            trail = (await api.get(f"/api/audit?target_id={run['id']}")).json()["items"]
            assert [e["action"] for e in trail] == ["run.create"]
            assert (await api.get(f"/api/runs/{run['id']}")).json()["status"] == "pending"
            server.start()  # back (same port and store), so the gateway stops as usual

            async def ready() -> bool:
                return bool((await api.get("/ready")).json()["checks"]["broker"])

            await eventually(ready, timeout=20, what="the gateway reconnected to the broker")
    finally:
        discovery.stop()
        server.stop()


async def test_auth_off_is_the_local_admin(client: AsyncTestClient) -> None:
    r = await client.get("/api/me")
    assert r.json() == {"id": "local", "name": "local user (authentication off)", "role": "admin"}
    task = (await client.post("/api/tasks", json={"name": "local"})).json()
    entry = (await client.get(f"/api/audit?target_id={task['id']}")).json()["items"][0]
    assert entry["actor"]["id"] == "local" and entry["action"] == "task.create"


async def test_the_new_paths_answer_with_and_without_a_trailing_slash(api: AsyncTestClient) -> None:
    for path in ("/api/keys", "/api/audit", "/api/approvals", "/api/me"):
        plain = await api.get(path, headers=bearer(ADMIN))
        slashed = await api.get(path + "/", headers=bearer(ADMIN))
        assert plain.status_code == slashed.status_code == 200, (path, plain.text, slashed.text)
        assert (await api.get(path + "/")).status_code == 401
    made = await api.post("/api/keys/", json={"name": "slash", "role": "viewer"}, headers=bearer(ADMIN))
    assert made.status_code == 201
    assert (await api.delete(f"/api/keys/{made.json()['id']}/", headers=bearer(ADMIN))).status_code == 204

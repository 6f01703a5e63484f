"""The gateway in-process with GATEWAY_CORS_ORIGINS and GATEWAY_ALLOWED_HOSTS set, and input that
PostgreSQL cannot store (a NUL): the checks of guard.py and errors.py on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from agentbus.gateway.app import create_app
from agentbus.gateway.settings import Settings
from tests.integration.conftest import LOCAL
from tests.support.fake_runner import FakeRunnerInfo
from tests.support.servers import NatsServer

APP = "https://app.example"
EVIL = "https://evil.example"
Gateway = Callable[..., AbstractAsyncContextManager[AsyncTestClient]]


@pytest.fixture
def gateway(own_nats: NatsServer, runner_info: FakeRunnerInfo, tmp_path: Path) -> Gateway:
    """`async with gateway(base_url, **settings) as client`: a gateway with those settings."""

    @asynccontextmanager
    async def start(base_url: str = LOCAL, **settings: object) -> AsyncIterator[AsyncTestClient]:
        s = Settings(
            nats_url=own_nats.url,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/gw.db",
            request_timeout_s=0.5,
            **settings,  # type: ignore[arg-type]
        )
        async with AsyncTestClient(app=create_app(s), base_url=base_url) as client:
            yield client

    return start


async def _task_count(client: AsyncTestClient) -> int:
    r = await client.get("/api/tasks")
    assert r.status_code == 200, r.text
    return r.json()["total"]


async def test_a_listed_origin_gets_cors_headers_and_may_write(gateway: Gateway) -> None:
    async with gateway(cors_origins=(APP,)) as client:
        preflight = await client.options(
            "/api/tasks",
            headers={
                "Origin": APP,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code in (200, 204), preflight.text
        assert preflight.headers["access-control-allow-origin"] == APP
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "content-type" in preflight.headers["access-control-allow-headers"].lower()

        r = await client.post("/api/tasks", json={"name": "from the app"}, headers={"Origin": APP})
        assert r.status_code == 201, r.text
        assert r.headers["access-control-allow-origin"] == APP
        r = await client.get(f"/api/tasks/{r.json()['id']}", headers={"Origin": APP})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP


async def test_another_origin_gets_no_cors_headers_and_may_not_write(gateway: Gateway) -> None:
    async with gateway(cors_origins=(APP,)) as client:
        preflight = await client.options(
            "/api/tasks", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers
        before = await _task_count(client)
        for method, path, body in [
            ("POST", "/api/tasks", {"name": "from a page"}),
            ("PATCH", "/api/tasks/nope", {"name": "x"}),
            ("DELETE", "/api/tasks/nope", None),
            ("POST", "/api/runs", {"task_id": "nope"}),
        ]:
            r = await client.request(method, path, json=body, headers={"Origin": EVIL})
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["status_code"] == 403 and "origin" in r.json()["detail"]
            assert "access-control-allow-origin" not in r.headers
        assert await _task_count(client) == before
        # A read from that page is answered, but without CORS headers its browser keeps it from the page.
        r = await client.get("/api/tasks", headers={"Origin": EVIL})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


async def test_without_cors_origins_only_the_gateways_own_origin_may_write(gateway: Gateway) -> None:
    async with gateway() as client:
        r = await client.post("/api/tasks", json={"name": "own page"}, headers={"Origin": LOCAL})
        assert r.status_code == 201, r.text
        assert "access-control-allow-origin" not in r.headers
        r = await client.post("/api/tasks", json={"name": "listed nowhere"}, headers={"Origin": APP})
        assert r.status_code == 403, r.text


async def test_allowed_hosts_serves_those_names_and_refuses_the_others(gateway: Gateway) -> None:
    async with gateway("http://agentbus.example", allowed_hosts=("agentbus.example",)) as client:
        assert (await client.get("/health")).status_code == 200
        r = await client.get("/api/tasks", headers={"Host": "agentbus.example:8443"})
        assert r.status_code == 200, r.text  # the port is not part of the name
        for host in ("evil.example", "127.0.0.1", "agentbus.example.evil.example", "localhost"):
            r = await client.get("/health", headers={"Host": host})
            assert r.status_code == 400, (host, r.text)
            assert r.json()["status_code"] == 400 and "Host" in r.json()["detail"]


async def test_allowed_hosts_star_serves_any_name(gateway: Gateway) -> None:
    async with gateway("http://anything.example", allowed_hosts=("*",)) as client:
        for host in ("anything.example", "evil.example", "10.1.2.3:8000", "127.0.0.1"):
            r = await client.get("/api/tasks", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)


async def test_by_default_loopback_names_only(gateway: Gateway) -> None:
    async with gateway() as client:
        for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
            assert (await client.get("/health", headers={"Host": host})).status_code == 200, host
        r = await client.get("/health", headers={"Host": "evil.example"})
        assert r.status_code == 400


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/tasks/a%00b", None),
        ("GET", "/api/runs/a%00b/logs", None),
        ("GET", "/api/runs?task_id=a%00b", None),
        ("POST", "/api/tasks", {"name": "a\u0000b"}),
        ("POST", "/api/tasks", {"name": "ok", "config": {"k": "a\u0000b"}}),
        ("POST", "/api/runs", {"task_id": "a\u0000b"}),
    ],
    ids=["task-id", "run-id", "filter", "name", "config", "run-task-id"],
)
async def test_a_nul_is_never_a_5xx(client: AsyncTestClient, method: str, path: str, body: object) -> None:
    """PostgreSQL stores no NUL in text (nor `\\u0000` in JSON): that is the client's input, a 4xx,
    not "database unavailable" (SQLite stores it, or finds nothing)."""
    before = await _task_count(client)
    r = await client.request(method, path, json=body)
    assert r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    if r.status_code >= 400:
        assert r.json()["status_code"] == r.status_code and r.json()["detail"]
    else:
        assert r.status_code in (200, 201)
    if r.status_code != 201:
        assert await _task_count(client) == before

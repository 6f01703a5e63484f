"""Hostile input against the real processes, table-driven from the OpenAPI document.

For every operation of `/openapi.json`: each integer query parameter gets numbers past 2**63,
negative, in exponent form and not numbers at all; each string query parameter 10,000 characters, a
NUL, broken percent-encoding and unicode; each path parameter odd ids; each body-taking operation
bodies nested 2,000 deep, not UTF-8, 2 MB, of another content type, empty, `null`, an array, each
field of a wrong type, an unknown field. Never a 5xx; every error is the gateway's JSON
(`status_code`, `detail`); the hostile case is a 4xx; and no failed write stored anything. Then
headers (Range, Last-Event-ID, a Content-Length lie), the WebSocket streams' `since`, and the
checks before routing (Host, Origin, content type, HEAD, OPTIONS, 405).

The table is built when the tests are collected, from the gateway's own OpenAPI document built
in-process; `test_the_table_covers_the_live_document` checks it is the one the live gateway serves.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentbus.gateway.app import Gateway
from agentbus.gateway.settings import Settings
from tests.support.client import Api
from tests.support.system import System
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

MAX_BODY = 1024 * 1024  # MAX_BODY_BYTES of the system under test (its default)
EVIL = "http://evil.example"
# Query parameters that filter a list by an id or a name: a value that names nothing is an empty
# page, not an error (only one past their length limit is a 400).
FREE_TEXT = {"task_id", "run_id", "name", "actor", "action", "target_id"}
# Free text filters a page to nothing, except on these (a series needs a valid `name` besides).
NOT_PAGES = {"/api/metrics/series"}
# Summaries answer 200 for an id with no metrics (docs/api.md, Metrics), so an odd id gets an empty one
# (or a 404 where the id takes the path off the route).
SUMMARIES = {"/api/metrics/task/{task_id}/summary", "/api/metrics/run/{run_id}/summary"}
# A valid body per body-taking operation: each case changes one thing of it ("{task_id}" is
# replaced by the test task's id). An operation missing here fails the table's check.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "POST /api/tasks": {"name": "hostile"},
    "PATCH /api/tasks/{task_id}": {"name": "hostile"},
    "POST /api/runs": {"task_id": "{task_id}"},
    "PATCH /api/runs/{run_id}": {"labels": {"k": "v"}},
    "POST /api/runs/{run_id}/approve": {"approved": True},
    "POST /api/runs/{run_id}/cancel": {"reason": "hostile"},
    "POST /api/keys": {"name": "hostile", "role": "viewer"},
    # A run that does not exist: a body that slips through is a 404, and writes nothing.
    "POST /api/metrics": {"run_id": "hostile", "name": "hostile", "value": 1.0},
    # A receiver nobody runs: a body that slipped through would store a webhook (the test fails).
    "POST /api/webhooks": {
        "url": "http://127.0.0.1:9/hostile",
        "events": ["completion"],
        "secret": "hostile-secret-0123456789",
    },
}

INTEGERS = {
    "2**63": str(2**63),
    "2**64": str(2**64),
    "minus-1": "-1",
    "1e3": "1e3",
    "float": "5.0",
    "abc": "abc",
    "20-digits": "9" * 20,
    "empty": "",
}
STRINGS = {
    "10000-chars": "a" * 10_000,
    "nul": "%00",
    "bad-percent": "%zz",
    "undecodable": "%ff%fe",
    "unicode": quote("ünï✓😀"),
}
PATH_IDS = {
    "dot-dot-slash": "..%2F..",
    "5000-chars": "x" * 5000,
    "undecodable": "%ff",
    "nul": "%00",
    "unicode": quote("ünï✓😀"),
}


def _document() -> dict[str, Any]:
    return Gateway(Settings()).app.openapi_schema.to_schema()


DOC = _document()


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield method.upper(), path, op


def _types(schema: dict[str, Any]) -> set[str]:
    kinds = schema.get("type")
    out = set(kinds) if isinstance(kinds, list) else {kinds} if kinds else set()
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        out |= _types(branch)
    return out


def _body_schema(op: dict[str, Any]) -> dict[str, Any] | None:
    body = op.get("requestBody")
    return None if body is None else body["content"]["application/json"]["schema"]


@dataclass
class Case:
    id: str
    method: str
    path: str  # the template, e.g. /api/runs/{run_id}
    expect: str  # "4xx", "413", "415", "empty page", "empty summary"
    params: dict[str, str] = field(default_factory=dict)  # path parameters replaced (raw, encoded)
    query: str = ""  # raw query string
    body: bytes | None = None
    content_type: str | None = "application/json"

    @property
    def writes(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _wrong_types(schema: dict[str, Any], valid: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """`valid` with one field of a wrong type, for every field the body schema names."""
    for name, prop in schema.get("properties", {}).items():
        kinds = _types(prop)
        wrong: dict[str, Any] = {}
        if "boolean" in kinds:
            wrong |= {"0": 0, "string-true": "true"}
        if "integer" in kinds:
            wrong |= {"string-5": "5", "5.5": 5.5, "5.0": 5.0, "true": True}
        if "string" in kinds:
            wrong |= {"number": 5, "list": ["x"]}
        if "object" in kinds:
            wrong |= {"string": "x", "list": []}
        for label, value in wrong.items():
            yield f"{name}={label}", {**valid, name: value}


def _cases() -> Iterator[Case]:
    for method, path, op in _operations(DOC):
        label = f"{method} {path}"
        params = op.get("parameters", [])
        for p in params:
            if p["in"] == "query" and "integer" in _types(p["schema"]):
                for name, value in INTEGERS.items():
                    yield Case(
                        f"{label} ?{p['name']}={name}", method, path, "4xx", query=f"{p['name']}={value}"
                    )
            elif p["in"] == "query":
                for name, value in STRINGS.items():
                    free = p["name"] in FREE_TEXT and name != "10000-chars" and path not in NOT_PAGES
                    expect = "empty page" if free else "4xx"
                    yield Case(
                        f"{label} ?{p['name']}={name}", method, path, expect, query=f"{p['name']}={value}"
                    )
            elif p["in"] == "path":
                for name, value in PATH_IDS.items():
                    expect = "empty summary" if path in SUMMARIES else "4xx"
                    yield Case(
                        f"{label} {{{p['name']}}}={name}", method, path, expect, params={p["name"]: value}
                    )
        schema = _body_schema(op)
        if schema is None:
            continue
        valid = VALID_BODIES.get(label, {})
        optional = not op["requestBody"].get("required", False)
        bodies: dict[str, tuple[bytes, str, str]] = {
            "nested-2000": (b"[" * 2000 + b"]" * 2000, "application/json", "4xx"),
            "nested-2000-in-a-field": (
                _json(valid)[:-1] + b', "deep": ' + b'{"a": ' * 2000 + b"1" + b"}" * 2000 + b"}",
                "application/json",
                "4xx",
            ),
            "not-utf8": (b'{"name": "\xff\xfe"}', "application/json", "4xx"),
            "2MB": (_json({**valid, "pad": "x" * (2 * MAX_BODY)}), "application/json", "413"),
            "text-plain": (_json(valid), "text/plain", "415"),
            "form-urlencoded": (b"name=hostile", "application/x-www-form-urlencoded", "415"),
            "multipart": (
                b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nhostile\r\n--b--\r\n',
                "multipart/form-data; boundary=b",
                "415",
            ),
            "array": (b"[]", "application/json", "4xx"),
            "string": (b'"hostile"', "application/json", "4xx"),
            "not-json": (b"{name: hostile", "application/json", "4xx"),
            "unknown-field": (_json({**valid, "bogus_field": 1}), "application/json", "4xx"),
        }
        if not optional:  # no body, or `null`, is a valid one where the body is optional
            bodies |= {
                "empty": (b"", "application/json", "4xx"),
                "null": (b"null", "application/json", "4xx"),
            }
        for field_case, body in _wrong_types(schema, valid):
            bodies[field_case] = (_json(body), "application/json", "4xx")
        for name, (raw, content_type, expect) in bodies.items():
            yield Case(f"{label} body {name}", method, path, expect, body=raw, content_type=content_type)


CASES = list(_cases())


@dataclass
class World:
    """What the hostile requests aim at, and what must still be as it was after them."""

    system: System
    http: httpx.AsyncClient
    ids: dict[str, str]
    done_run: dict[str, Any]
    artifact: bytes
    snapshot: dict[str, Any]

    def url(self, case: Case) -> httpx.URL:
        path = case.path
        ids = {**self.ids, **({"run_id": self.done_run["id"]} if "{name}" in path else {})}
        for name in set(ids) | set(case.params):
            path = path.replace(f"{{{name}}}", case.params.get(name, ids.get(name, "")))
        raw = path + (f"?{case.query}" if case.query else "")
        return httpx.URL(self.system.base_url).copy_with(raw_path=raw.encode())

    async def state(self) -> dict[str, Any]:
        async def get(path: str) -> Any:
            r = await self.http.get(path)
            assert r.status_code == 200, r.text
            return r.json()

        return {
            "tasks": (await get("/api/tasks"))["total"],
            "runs": (await get("/api/runs"))["total"],
            "task": await get(f"/api/tasks/{self.ids['task_id']}"),
            "waiting": await get(f"/api/runs/{self.ids['run_id']}"),
            "done": await get(f"/api/runs/{self.done_run['id']}"),
        }


@pytest.fixture(scope="module")
async def world(system: System) -> AsyncIterator[World]:
    api = Api(system.base_url, system.ws_url)
    try:
        task = await api.task(
            name="hostile target", approval_timeout_s=3600, agent_config={"steps": 1, "step_delay_ms": 10}
        )
        waiting = await api.run(task["id"])
        done_task = await api.task(
            require_approval=False, agent_config={"steps": 1, "step_delay_ms": 10, "artifact": True}
        )
        done = await api.run(done_task["id"])
        await api.wait_status(waiting["id"], "awaiting_approval")
        await api.wait_status(done["id"], "completed")
        r = await api.http.get(f"/api/runs/{done['id']}/artifacts/result.json")
        assert r.status_code == 200, r.text

        async def a_metric() -> str | None:
            page = (await api.http.get("/api/metrics", params={"run_id": done["id"]})).json()
            return page["items"][0]["id"] if page["items"] else None

        async def counted() -> bool:  # the task's counters reflect the finished run
            t = (await api.http.get(f"/api/tasks/{done_task['id']}")).json()
            return t["total_runs"] == 1 and t["successful_runs"] == 1

        metric_id = await eventually(a_metric, what="a metric of the finished run")
        await eventually(counted, what="the task's counters")
        ids = {"task_id": task["id"], "run_id": waiting["id"], "metric_id": metric_id}
        w = World(system, api.http, {**ids, "name": "result.json", "kind": "scripted"}, done, r.content, {})
        w.snapshot = await w.state()
        yield w
    finally:
        await api.close()


def _is_error(r: httpx.Response) -> None:
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text[:300])
    body = r.json()
    assert body["status_code"] == r.status_code, body
    assert isinstance(body["detail"], str) and body["detail"], body


async def test_the_table_covers_the_live_document(world: World) -> None:
    r = await world.http.get("/openapi.json")
    assert r.status_code == 200
    live = {(m, p): op for m, p, op in _operations(r.json())}
    built = {(m, p): op for m, p, op in _operations(DOC)}
    assert live.keys() == built.keys()
    for key, op in live.items():
        assert op.get("parameters") == built[key].get("parameters"), key
        assert _body_schema(op) == _body_schema(built[key]), key
        if _body_schema(op) is not None:
            assert f"{key[0]} {key[1]}" in VALID_BODIES, f"add a valid body for {key} to VALID_BODIES"
    assert len(CASES) > 300


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_hostile_request(world: World, case: Case) -> None:
    headers = {} if case.content_type is None or case.body is None else {"content-type": case.content_type}
    body = case.body
    if body is not None:
        body = body.replace(b"{task_id}", world.ids["task_id"].encode())
    request = world.http.build_request(case.method, world.url(case), content=body, headers=headers)
    r = await world.http.send(request)
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if case.expect == "empty page":
        assert r.status_code == 200 and r.json()["items"] == [] and r.json()["total"] == 0, r.text[:300]
    elif case.expect == "empty summary" and r.status_code == 200:  # or a 404 (`..%2F..` leaves the route)
        assert r.json()["metric_count"] == 0, r.text[:300]
    else:
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
        if case.expect not in ("4xx", "empty summary"):
            assert r.status_code == int(case.expect), (r.status_code, r.text[:300])
        _is_error(r)
    if case.writes:
        assert await world.state() == world.snapshot, "a refused write changed something"


async def test_a_chunked_body_past_the_limit_is_413(world: World) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(2 * MAX_BODY // 65536):
            yield b"x" * 65536
        yield b'"}'

    r = await world.http.post("/api/tasks", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text[:300]
    _is_error(r)
    assert await world.state() == world.snapshot


async def test_a_content_length_lie_is_answered_413_at_once(world: World) -> None:
    """A huge Content-Length and a tiny body: refused from the header, without waiting for the rest."""
    port = world.system.gateways[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: 99999999999999\r\n\r\n{}" % port
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.split()[1] == b"413", status
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        body = json.loads(await asyncio.wait_for(reader.readexactly(length), 5))
        assert body["status_code"] == 413 and body["detail"]
    finally:
        writer.close()
    assert await world.state() == world.snapshot


async def test_a_range_of_5000_digits_is_ignored_and_the_whole_artifact_sent(world: World) -> None:
    r = await world.http.get(
        f"/api/runs/{world.done_run['id']}/artifacts/result.json",
        headers={"Range": "bytes=" + "9" * 5000 + "-"},
    )
    assert r.status_code == 200 and r.content == world.artifact


@pytest.mark.parametrize(
    "value",
    ["garbage", "9" * 5000, "-1", "1e3", "3.5"],
    ids=["word", "5000-digits", "minus-1", "1e3", "float"],
)
async def test_a_garbage_last_event_id_replays_from_the_start(world: World, value: str) -> None:
    r = await world.http.get(f"/api/runs/{world.done_run['id']}/events", headers={"Last-Event-ID": value})
    assert r.status_code == 200, r.text[:300]
    ids = [int(line[4:]) for line in r.text.splitlines() if line.startswith("id: ")]
    assert ids == list(range(1, world.snapshot["done"]["last_seq"] + 1))


def _ws(world: World, path: str, **kwargs: Any) -> Any:
    return connect(f"{world.system.ws_url}{path}", open_timeout=5, **kwargs)


async def _closed_with(ws: Any) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


@pytest.mark.parametrize(
    "since",
    ["-1", "abc", str(2**64), "1e3", "%00", ""],
    ids=["minus-1", "abc", "2**64", "1e3", "nul", "empty"],
)
@pytest.mark.parametrize("stream", ["runs", "tasks"])
async def test_a_stream_with_a_bad_since_is_closed_4400(world: World, stream: str, since: str) -> None:
    target = world.ids["run_id"] if stream == "runs" else world.ids["task_id"]
    async with _ws(world, f"/ws/{stream}/{target}?since={since}") as ws:
        assert await _closed_with(ws) == 4400


@pytest.mark.parametrize(
    "path", ["/ws/runs/nope", "/ws/tasks/nope", "/ws/runs/%ff", "/ws/runs/" + "x" * 5000]
)
async def test_a_stream_of_something_unknown_is_closed_4404(world: World, path: str) -> None:
    async with _ws(world, path) as ws:
        assert await _closed_with(ws) == 4404


async def test_a_stream_from_a_foreign_origin_is_refused_at_the_handshake(world: World) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with _ws(world, "/ws/stream", origin=EVIL):
            pass
    assert refused.value.response.status_code == 403
    # The gateway's own pages (its origin) may open one.
    async with _ws(world, "/ws/stream", origin=world.system.base_url) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame["event_type"]


async def test_a_host_the_gateway_does_not_serve_is_400(world: World) -> None:
    for method, path in [("GET", "/api/tasks"), ("POST", "/api/tasks"), ("GET", "/health")]:
        r = await world.http.request(
            method, path, json={"name": "x"} if method == "POST" else None, headers={"Host": "evil.example"}
        )
        assert r.status_code == 400, r.text
        _is_error(r)
    assert await world.state() == world.snapshot


async def test_an_approve_from_a_page_is_refused_and_the_run_still_waits(world: World) -> None:
    path = f"/api/runs/{world.ids['run_id']}/approve"
    body = b'{"approved": true}'
    # A form-like text/plain body from a foreign page (no preflight needed in a browser).
    r = await world.http.post(path, content=body, headers={"content-type": "text/plain", "Origin": EVIL})
    assert r.status_code == 403, r.text
    _is_error(r)
    # Without Origin (not a browser): still not JSON.
    r = await world.http.post(path, content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 415, r.text
    _is_error(r)
    # JSON from a foreign page.
    r = await world.http.post(
        path, content=body, headers={"content-type": "application/json", "Origin": EVIL}
    )
    assert r.status_code == 403, r.text
    run = (await world.http.get(f"/api/runs/{world.ids['run_id']}")).json()
    assert run["status"] == "awaiting_approval" and run["approval"] is None
    assert await world.state() == world.snapshot


async def test_a_preflight_from_a_foreign_origin_gets_no_cors_headers(world: World) -> None:
    r = await world.http.options(
        "/api/tasks",
        headers={
            "Origin": EVIL,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert r.status_code < 500
    assert not any(h.startswith("access-control-") for h in r.headers), dict(r.headers)


async def test_head_is_the_get_without_a_body(world: World) -> None:
    r = await world.http.head("/api/tasks")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("which", ["finished", "live"])
async def test_head_on_a_runs_event_stream_returns_at_once(world: World, which: str) -> None:
    run_id = world.done_run["id"] if which == "finished" else world.ids["run_id"]
    started = time.monotonic()
    r = await asyncio.wait_for(world.http.head(f"/api/runs/{run_id}/events"), 5)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"].startswith("text/event-stream")
    assert time.monotonic() - started < 5


async def test_an_unsupported_method_is_405_with_allow(world: World) -> None:
    for method, path, allowed in [
        ("PUT", "/api/tasks", {"GET", "POST"}),
        ("PUT", f"/api/tasks/{world.ids['task_id']}", {"GET", "PATCH", "DELETE"}),
        ("DELETE", "/api/tasks", {"GET", "POST"}),
    ]:
        r = await world.http.request(method, path, json={"name": "x"})
        assert r.status_code == 405, (method, path, r.text)
        _is_error(r)
        assert allowed <= {m.strip() for m in r.headers["allow"].split(",")}, r.headers["allow"]
    assert await world.state() == world.snapshot


async def test_nothing_was_half_stored(world: World) -> None:
    """After every refused write of this module: the same tasks and runs, the target run still
    waiting for its approval."""
    state = await world.state()
    assert state == world.snapshot
    assert state["waiting"]["status"] == "awaiting_approval" and state["waiting"]["approval"] is None

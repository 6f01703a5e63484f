"""Operating the system (docs/operations.md): every service's Prometheus metrics, the runner's and
the metrics service's probes, `/ready`'s timings. Real processes, scraped after real runs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from agentbus.contracts import subjects
from tests.e2e.conftest import ADMIN
from tests.support.client import Api, next_event
from tests.support.servers import free_port
from tests.support.system import System, start_system
from tests.support.waiting import eventually

FAST = {"steps": 2, "step_delay_ms": 20}
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


async def fetch(method: str, url: str, **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.request(method, url, **kwargs)  # type: ignore[arg-type]


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = SAMPLE.match(line)
        assert m, line
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
        out.append((m["name"], labels, float(m["value"])))
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for n, ls, v in samples(text) if n == name and labels.items() <= ls.items())


@pytest.fixture(scope="module")
def ops() -> Iterator[tuple[System, int, int]]:
    runner_port, metrics_port = free_port(), free_port()
    sys_ = start_system(RUNNER_METRICS_PORT=str(runner_port), METRICS_METRICS_PORT=str(metrics_port))
    try:
        yield sys_, runner_port, metrics_port
    finally:
        sys_.stop()


@pytest.fixture
async def ops_api(ops: tuple[System, int, int]) -> AsyncIterator[Api]:
    system = ops[0]
    client = Api(system.base_url, system.ws_url)
    try:
        yield client
    finally:
        await client.close()


async def test_every_service_exports_what_a_run_moved(ops: tuple[System, int, int], ops_api: Api) -> None:
    system, runner_port, metrics_port = ops
    task = await ops_api.task(require_approval=False, agent_config=FAST)
    run = await ops_api.run(task["id"])
    await ops_api.wait_status(run["id"], "completed")
    assert (await ops_api.http.get(f"/api/runs/{run['id']}")).status_code == 200
    gateway = f"{system.base_url}/metrics"

    async def gateway_counted() -> str:
        r = await fetch("GET", gateway)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert value(r.text, "agentbus_gateway_events_ingested_total") > 0
        assert value(r.text, "agentbus_runs_ended_total", outcome="completion") >= 1
        return r.text

    text = await eventually(gateway_counted, what="the gateway counted the run's events")
    routes = {ls["route"] for n, ls, _ in samples(text) if n.startswith("agentbus_gateway_http_request")}
    assert "/api/runs/{run_id}" in routes, routes  # the route template, never the raw id
    assert not any(run["id"] in r for r in routes)
    assert (
        value(text, "agentbus_gateway_http_request_duration_seconds_count", route="/api/tasks", method="POST")
        >= 1
    )
    backlog = {ls["consumer"] for n, ls, _ in samples(text) if n == "agentbus_consumer_ack_pending_messages"}
    assert backlog == {subjects.GATEWAY_EVENTS_CONSUMER}

    async def runner_idle() -> str:
        r = await fetch("GET", f"http://127.0.0.1:{runner_port}/metrics")
        assert r.status_code == 200
        assert any(n == "agentbus_runner_runs_in_flight" for n, _, _ in samples(r.text))
        assert value(r.text, "agentbus_runner_runs_in_flight") == 0  # back to 0 once the run ended
        return r.text

    runner_text = await eventually(runner_idle, what="the runner holds no run")
    assert value(runner_text, "agentbus_runner_capacity") >= 1
    lanes = {ls["stream"] for n, ls, _ in samples(runner_text) if n == "agentbus_consumer_pending_messages"}
    assert lanes == {subjects.RUN_COMMANDS_STREAM}
    metrics_text = (await fetch("GET", f"http://127.0.0.1:{metrics_port}/metrics")).text
    consumers = {
        ls["consumer"] for n, ls, _ in samples(metrics_text) if n == "agentbus_consumer_pending_messages"
    }
    assert consumers == {subjects.METRICS_EVENTS_CONSUMER, subjects.METRICS_LIFECYCLE_CONSUMER}


async def test_runner_and_metrics_probes(ops: tuple[System, int, int]) -> None:
    _, runner_port, metrics_port = ops
    for port in (runner_port, metrics_port):
        assert (await fetch("GET", f"http://127.0.0.1:{port}/healthz")).status_code == 200
        assert (await fetch("GET", f"http://127.0.0.1:{port}/readyz")).status_code == 200
        assert (await fetch("GET", f"http://127.0.0.1:{port}/nothing")).status_code == 404
        assert (await fetch("POST", f"http://127.0.0.1:{port}/metrics")).status_code == 405


async def test_ready_reports_how_long_each_check_took(ops: tuple[System, int, int]) -> None:
    body = (await fetch("GET", f"{ops[0].base_url}/ready")).json()
    assert body["status"] == "ready"
    assert set(body["timings"]) >= {"broker", "database", "runner", "metrics"}
    assert all(isinstance(ms, float | int) and ms >= 0 for ms in body["timings"].values())
    assert set(body["checks"]) == set(body["timings"])


async def test_metrics_needs_the_viewer_role_when_authentication_is_on(secured: System) -> None:
    assert (await fetch("GET", f"{secured.base_url}/metrics")).status_code == 401
    r = await fetch("GET", f"{secured.base_url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200
    assert "agentbus_gateway_http_request_duration_seconds" in r.text


async def test_open_streams_and_frames_sent_are_counted(ops: tuple[System, int, int], ops_api: Api) -> None:
    system = ops[0]
    task = await ops_api.task(require_approval=False, agent_config=FAST)
    run = await ops_api.run(task["id"])
    await ops_api.wait_status(run["id"], "completed")
    url = f"{system.base_url}/metrics"
    before = value((await fetch("GET", url)).text, "agentbus_gateway_stream_frames_total", kind="websocket")
    async with ops_api.ws(f"/ws/tasks/{task['id']}?since=0") as ws:
        assert (await next_event(ws))["run_id"] == run["id"]  # the replay's first event

        async def counted() -> bool:
            text = (await fetch("GET", url)).text
            assert value(text, "agentbus_gateway_streams_open", kind="websocket") == 1
            assert value(text, "agentbus_gateway_stream_frames_total", kind="websocket") > before
            return True

        await eventually(counted, what="the open WebSocket and its frames counted")

    async def closed() -> bool:
        text = (await fetch("GET", url)).text
        assert value(text, "agentbus_gateway_streams_open", kind="websocket") == 0
        return True

    await eventually(closed, what="the closed WebSocket no longer counted")

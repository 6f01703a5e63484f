"""The dashboard at `/`, driven in a real Chromium against the session's systems: create a task,
start a run, watch the plan and the progress arrive live, decide (approve, revise, reject), download
an artifact, the approvals inbox's countdown, the charts, the sign-in form with authentication on,
and the API pages (Swagger UI, Redoc) rendered from the gateway's own files with nothing fetched
from anywhere else.

`AGENTBUS_SCREENSHOTS=1` also writes the pages into docs/screenshots/ (`make screenshots`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.e2e.conftest import ADMIN
from tests.support.browser import chromium_or_reason
from tests.support.client import Api
from tests.support.system import System
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
expect.set_options(timeout=15_000)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    path, reason = chromium_or_reason()
    if path is None:
        pytest.skip(f"no browser for the dashboard tests: {reason}")
    args = ["--disable-dev-shm-usage"] + (["--no-sandbox"] if os.geteuid() == 0 else [])
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=args)
        try:
            yield browser
        finally:
            await browser.close()


class Tab:
    """A page in a fresh context, with what it asked for and what went wrong in it."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.requests: list[str] = []
        self.sockets: list[str] = []
        self.problems: list[str] = []
        self.blocked_ok: tuple[str, ...] = ()  # URLs the page's policy is expected to block
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("websocket", lambda ws: self.sockets.append(ws.url))
        page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        page.on(
            "console",
            lambda m: self.problems.append(m.text) if "Content Security Policy" in m.text else None,
        )

    async def open(self, path: str = "/") -> Page:
        await self.page.goto(self.base_url + path)
        return self.page

    async def shot(self, name: str) -> None:
        if os.environ.get("AGENTBUS_SCREENSHOTS"):
            SHOTS.mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def check(self) -> None:
        """Nothing broke, and every HTTP request stayed on the gateway with no credential in its URL."""
        problems = [p for p in self.problems if not any(url in p for url in self.blocked_ok)]
        assert not problems, problems
        for url in self.requests:
            if url.startswith(self.blocked_ok):
                continue
            assert url.startswith((self.base_url, "blob:", "data:")), url
            assert "token=" not in url, url


async def _tab(browser: Browser, base_url: str) -> AsyncIterator[Tab]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    try:
        tab = Tab(await context.new_page(), base_url)
        yield tab
        tab.check()
    finally:
        await context.close()


@pytest.fixture
async def tab(browser: Browser, system: System) -> AsyncIterator[Tab]:
    async for t in _tab(browser, system.base_url):
        yield t


@pytest.fixture
async def secured_tab(browser: Browser, secured: System) -> AsyncIterator[Tab]:
    async for t in _tab(browser, secured.base_url):
        yield t


async def test_the_metrics_page_tries_a_failed_load_again_soon(tab: Tab, api: Api) -> None:
    """A load that failed (the network, a gateway restarting) is shown, tried again within seconds
    (not only at the 15-second refresh), and its error goes once a load succeeds."""
    failed: list[str] = []

    async def fail_once(route: Any) -> None:
        if not failed:
            failed.append(route.request.url)
            await route.abort("connectionreset")
        else:
            await route.continue_()

    await tab.page.route("**/api/metrics/summary?*", fail_once)
    page = await tab.open("/#/metrics")
    await expect(page.locator("#error")).to_be_visible()
    await expect(page.locator("#summary")).not_to_contain_text("Loading", timeout=6000)
    await expect(page.locator("#error")).to_be_hidden()
    assert len(failed) == 1
    tab.blocked_ok = (failed[0],)  # aborted on purpose: its failure is no problem of the page


async def test_create_a_task_start_a_run_approve_it_and_download_its_artifact(tab: Tab) -> None:
    page = await tab.open("/")
    await page.fill("#task-name", "dashboard: approve")
    await page.fill("#task-config", json.dumps({"steps": 3, "step_delay_ms": 300, "artifact": True}))
    await page.click("#create-task button[type=submit]")
    await page.wait_for_url(re.compile(r"#/tasks/"))
    await expect(page.locator("h1")).to_contain_text("dashboard: approve")
    await page.click("#start-run")
    await page.wait_for_url(re.compile(r"#/runs/"))

    await expect(page.locator("#plan")).to_contain_text("Step 3")  # arrived over the WebSocket
    await expect(page.locator("#decision")).to_be_visible()
    await expect(page.locator("#decision-deadline")).to_have_text(
        re.compile(r"^Decide by .+: [45]:\d\d left\.$")
    )
    await expect(page.locator("#run-status")).to_contain_text("awaiting approval")
    await tab.shot("run-awaiting-approval")
    await page.fill("#feedback", "looks good")
    await page.click("#approve")

    await expect(page.locator("#progress-text")).to_have_text("100%")
    await expect(page.locator("#run-status")).to_contain_text("completed")
    await expect(page.locator("#run-decision")).to_contain_text("looks good")
    await expect(page.locator("#decision")).to_be_hidden()
    seqs = [
        int(s)
        for s in await page.locator("#events tr[data-seq]").evaluate_all(
            "rows => rows.map(r => r.dataset.seq)"
        )
    ]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # every event once, in order
    types = await page.locator("#events tr[data-seq]").evaluate_all("rows => rows.map(r => r.dataset.type)")
    assert types[-1] == "completion" and "approved" in types and types.count("progress") == 3, types

    button = page.locator("#artifacts button.download[data-name='result.json']")
    async with page.expect_download() as info:
        await button.click()
    download = await info.value
    assert download.suggested_filename == "result.json"
    result = json.loads(await asyncio.to_thread(Path(await download.path()).read_text))
    assert result["steps_completed"] == 3
    await tab.shot("run-completed")


async def test_request_a_revision_then_reject_with_feedback(tab: Tab, api: Api) -> None:
    task = await api.task(name="dashboard: reject", agent_config={"steps": 2, "step_delay_ms": 50})
    run = await api.run(task["id"])
    page = await tab.open(f"/#/runs/{run['id']}")
    await expect(page.locator("#decision")).to_be_visible()
    await page.fill("#feedback", "split step 2")
    await page.click("#revise")
    await expect(page.locator("#plan")).to_contain_text("Version 2")
    await expect(page.locator("#plan-versions")).to_contain_text("Version 1 · revised")
    await expect(page.locator("#decision")).to_be_visible()
    await page.fill("#feedback", "not this week")
    await page.click("#reject")
    await expect(page.locator("#run-status")).to_contain_text("rejected")
    await expect(page.locator("#run-decision")).to_contain_text("not this week")
    await expect(page.locator("#events")).to_contain_text("feedback: not this week")
    stored = await api.get_run(run["id"])
    assert stored["status"] == "rejected" and stored["approval"]["feedback"] == "not this week"


async def test_the_inbox_shows_a_waiting_run_and_counts_down(tab: Tab, api: Api) -> None:
    task = await api.task(name="dashboard: inbox", approval_timeout_s=120, agent_config={"steps": 2})
    run = await api.run(task["id"])
    await api.wait_status(run["id"], "awaiting_approval")
    page = await tab.open("/#/approvals")
    countdown = page.locator(f"#approvals tr[data-run='{run['id']}'] .countdown")
    await expect(countdown).to_have_text(re.compile(r"^(1:5\d|2:00) left$"))
    first = await countdown.text_content()
    await expect(countdown).not_to_have_text(first or "")  # it ticks
    await expect(page.locator("#pending-count")).not_to_be_empty()
    await tab.shot("approvals")
    await page.click(f"#approvals tr[data-run='{run['id']}'] a >> nth=0")
    await expect(page.locator("#decision")).to_be_visible()
    await page.click("#cancel")
    await expect(page.locator("#run-status")).to_contain_text("cancelled")


async def test_the_lists_follow_runs_live_and_the_charts_draw(tab: Tab, api: Api) -> None:
    page = await tab.open("/")
    # Loaded (a table, or the empty list's line when this test runs first) and following the stream.
    await expect(page.locator("#tasks")).not_to_contain_text("Loading")
    await expect(page.locator("h1")).to_contain_text("· live")
    task = await api.task(name="dashboard: charts", require_approval=False, agent_config={"steps": 2})
    run = await api.run(task["id"])
    # No reload: the lists follow the stream of every event.
    await expect(page.locator(f"#runs tr[data-run='{run['id']}'] .status")).to_contain_text("completed")
    await expect(page.locator(f"#tasks tr[data-task='{task['id']}']")).to_contain_text("100%")
    await tab.shot("tasks")

    async def recorded() -> bool | None:
        r = await api.http.get("/api/metrics/series", params={"name": "duration", "bucket": "1m"})
        return True if r.status_code == 200 and r.json()["points"] else None

    await eventually(recorded, 15, "the run's metrics recorded")
    page = await tab.open("/#/metrics")
    for chart in ("duration", "success", "tokens", "cost"):
        await expect(page.locator(f"#chart-{chart} svg circle").first).to_be_attached()
    await expect(page.locator("#stat-runs b")).not_to_have_text("0")
    await tab.shot("metrics")


async def test_with_authentication_on_the_token_form_signs_in(secured: System, secured_tab: Tab) -> None:
    page = await secured_tab.open("/")
    await expect(page.locator("#signin")).to_be_visible()
    await secured_tab.shot("sign-in")
    await page.fill("#token", "not-a-credential")
    await page.click("#signin button")
    await expect(page.locator("#signin-error")).not_to_be_empty()
    await page.fill("#token", ADMIN)
    await page.click("#signin button")
    await expect(page.locator("#tasks")).to_be_visible()
    await expect(page.locator("#who")).to_contain_text("admin")
    assert await page.evaluate("sessionStorage.getItem('agentbus.token')") == ADMIN
    await page.fill("#task-name", "dashboard: secured")
    await page.click("#create-task button[type=submit]")
    await page.wait_for_url(re.compile(r"#/tasks/"))
    await page.click("#start-run")
    await expect(page.locator("#decision")).to_be_visible()  # the run's WebSocket took ?token=
    assert any("token=" in url for url in secured_tab.sockets), secured_tab.sockets
    await page.click("#sign-out")
    await expect(page.locator("#signin")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('agentbus.token')") is None


def _headers_of(base_url: str, path: str) -> tuple[httpx.Response, dict[str, Any]]:
    r = httpx.get(base_url + path, timeout=10)
    return r, {k.lower(): v for k, v in r.headers.items()}


def test_the_pages_are_open_static_and_carry_a_content_security_policy(secured: System) -> None:
    for path in ("/", "/ui/app.js", "/ui/style.css", "/ui/vendor/swagger-ui/swagger-ui.css"):
        r, headers = _headers_of(secured.base_url, path)
        assert r.status_code == 200, (path, r.status_code)
        assert ADMIN not in r.text
        assert "script-src 'self';" in headers["content-security-policy"], path
        assert "unsafe-inline" not in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff"
    r, headers = _headers_of(secured.base_url, "/docs")
    assert r.status_code == 200 and "/ui/vendor/swagger-ui/swagger-ui-bundle.js" in r.text
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "https://" not in r.text.split("<body>")[0]  # no script, style or icon from elsewhere
    assert httpx.get(secured.base_url + "/ui/nope.js").status_code == 404
    spec = httpx.get(secured.base_url + "/openapi.json").json()
    assert not any(p == "/" or p.startswith("/ui") for p in spec["paths"])


async def test_swagger_and_redoc_render_from_the_gateways_own_files(tab: Tab) -> None:
    page = await tab.open("/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("agentbus")
    await expect(page.locator(".opblock").first).to_be_visible()
    # Redoc's "API docs by Redocly" logo is an image on its CDN: the page's policy blocks it.
    tab.blocked_ok = ("https://cdn.redoc.ly/",)
    page = await tab.open("/redoc")
    await expect(page.locator("#redoc-container h1").first).to_contain_text("agentbus")

"""Where the runner's OPENAI_API_KEY goes, and what a model server's answer can put in a run.

A real runner on the real nats-server, three real OpenAI-compatible servers on
loopback: the runner's own (OPENAI_BASE_URL), one on OPENAI_ALLOWED_BASE_URLS,
and one a task names on its own. The key goes only to the first two; an error
answer reaches the run's error as a status line, never as the server's words.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import nats
import pytest

from agentbus.contracts import Event, RunStart
from agentbus.runner import Runner, running
from agentbus.runner.settings import ModelDefaults
from tests.integration.test_runner import RunEvents, queue, settings
from tests.support.fake_openai import FakeOpenAI, Reply

pytestmark = pytest.mark.timeout(60)

RUNNER_KEY = "sk-runner-SECRET-0123456789"
TASK_KEY = "sk-task-own-9876543210"
MARKER = "MARKER-internal-c41d"
REFUSED = (
    "agent_config.base_url is not a model API the runner sends its OPENAI_API_KEY to "
    "(OPENAI_BASE_URL, OPENAI_ALLOWED_BASE_URLS): set agent_config.api_key for that server"
)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeOpenAI]]:
    """own: OPENAI_BASE_URL; listed: on OPENAI_ALLOWED_BASE_URLS; other: on neither."""
    with FakeOpenAI() as own, FakeOpenAI() as listed, FakeOpenAI() as other:
        yield {"own": own, "listed": listed, "other": other}


@pytest.fixture
async def runner(nats_url: str, servers: dict[str, FakeOpenAI]) -> AsyncIterator[Runner]:
    for server in servers.values():
        server.reset()
    defaults = ModelDefaults(
        base_url=servers["own"].url,
        allowed_base_urls=(servers["listed"].url,),
        api_key=RUNNER_KEY,
        model="fake-model",
    )
    async with running(settings(nats_url, model=defaults)) as r:
        yield r


@pytest.fixture
async def js(nats_url: str, runner: Runner) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.close()


async def run_openai(js: Any, **agent_config: Any) -> tuple[list[Event], list[str]]:
    """Queue an `openai` run as the gateway does; its events once it has ended, and their types."""
    start = RunStart(
        run_id=uuid.uuid4().hex,
        task_id=uuid.uuid4().hex,
        run_number=1,
        task_name="t",
        agent="openai",
        agent_config=agent_config,
        require_approval=False,
    )
    await queue(js, start)
    log = RunEvents(js, start.run_id)
    await log.until_terminal(timeout=30)
    return await log.all_stored(), log.types


def keys_sent(server: FakeOpenAI) -> set[str]:
    return {r.headers.get("authorization", "") for r in server.requests}


def everything_said(events: list[Event], caplog: pytest.LogCaptureFixture) -> str:
    return b"".join(msgspec.json.encode(e) for e in events).decode() + caplog.text


@pytest.mark.parametrize(
    "base_url",
    [
        "{other}",
        "http://127.0.0.1:{own_port}@127.0.0.1:{other_port}/v1",  # user info, then the other server
        "http://localhost:{own_port}/v1",  # the runner's server under another host name
        "http://127.0.0.1:{own_port}/v1/chat",  # another path on it
    ],
    ids=["other-server", "userinfo-trick", "other-host-name", "other-path"],
)
async def test_a_task_naming_another_server_without_a_key_is_refused_before_any_request(
    js: Any, servers: dict[str, FakeOpenAI], base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = base_url.format(
        other=servers["other"].url, own_port=servers["own"].port, other_port=servers["other"].port
    )
    events, types = await run_openai(js, base_url=url)
    assert types == ["analysis_start", "failure"]
    assert events[-1].data.error == REFUSED  # type: ignore[attr-defined]
    assert all(s.requests == [] for s in servers.values()), "no request was sent anywhere"
    assert RUNNER_KEY not in everything_said(events, caplog)


async def test_a_task_naming_another_server_sends_its_own_key_never_the_runners(
    js: Any, servers: dict[str, FakeOpenAI], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    events, types = await run_openai(js, base_url=servers["other"].url, api_key=TASK_KEY)
    assert types[-1] == "completion", events[-1]
    assert len(servers["other"].chat_requests()) == 3  # the plan and its two steps
    assert keys_sent(servers["other"]) == {f"Bearer {TASK_KEY}"}
    assert servers["own"].requests == [] and servers["listed"].requests == []
    said = everything_said(events, caplog)
    assert RUNNER_KEY not in said and TASK_KEY not in said


@pytest.mark.parametrize(
    ("server", "base_url"),
    [
        ("own", None),  # agent_config names none: OPENAI_BASE_URL
        ("own", "http://127.0.0.1:{own_port}/v1/"),  # names it, spelled differently
        ("listed", "{listed}"),  # names one on OPENAI_ALLOWED_BASE_URLS
    ],
    ids=["default", "same-url", "allow-listed"],
)
async def test_the_runner_key_goes_to_its_own_servers(
    js: Any, servers: dict[str, FakeOpenAI], server: str, base_url: str | None
) -> None:
    config = {}
    if base_url is not None:
        config["base_url"] = base_url.format(own_port=servers["own"].port, listed=servers["listed"].url)
    events, types = await run_openai(js, **config)
    assert types[-1] == "completion", events[-1]
    assert len(servers[server].chat_requests()) == 3  # the plan and its two steps
    assert keys_sent(servers[server]) == {f"Bearer {RUNNER_KEY}"}
    assert all(s.requests == [] for name, s in servers.items() if name != server)


@pytest.mark.parametrize("server", ["own", "other"])
async def test_an_error_answer_reaches_the_run_as_its_status_line_only(
    js: Any, servers: dict[str, FakeOpenAI], server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The run's error (the gateway's error_message) names the status, not what the server said."""
    caplog.set_level(logging.DEBUG)
    target = servers[server]
    target.script(Reply.error(403, f"{MARKER}: secret=42", reason=MARKER, headers={"X-Leak": MARKER}))
    config = {"base_url": target.url, "api_key": TASK_KEY} if server == "other" else {}
    events, types = await run_openai(js, **config)
    assert types == ["analysis_start", "failure"]
    assert events[-1].data.error == (  # type: ignore[attr-defined]
        f"planning failed: model server 127.0.0.1:{target.port} answered HTTP 403 Forbidden"
    )
    assert len(target.chat_requests()) == 1
    said = everything_said(events, caplog)
    assert MARKER not in said and RUNNER_KEY not in said and TASK_KEY not in said

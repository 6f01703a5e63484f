"""The `openai` agent and its HTTP client against a real OpenAI-compatible server on loopback.

The server (tests/support/fake_openai.py) is scripted per test: normal and
streamed completions, malformed plans, 429/5xx, a hanging server, a stream that
never ends. No broker here: the agent runs with a bare AgentContext.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentbus.contracts import RunStart
from agentbus.runner.agents import AgentConfigError, AgentContext, AgentError
from agentbus.runner.agents.llm import ChatClient, ModelError, backoff_s, retry_after_s
from agentbus.runner.agents.openai import OpenAIAgent, parse_plan
from agentbus.runner.settings import ModelDefaults, Settings, parse_prices
from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)
KEY = "sk-test-SECRET-1234567890"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as s:
        yield s


@pytest.fixture(autouse=True)
def clean(server: FakeOpenAI) -> None:
    server.reset()


class Recorder:
    """Stands in for the runner: collects artifacts and streamed progress."""

    def __init__(self) -> None:
        self.artifacts: dict[str, tuple[bytes, str]] = {}
        self.partials: list[str] = []

    async def write(self, name: str, data: bytes, content_type: str) -> None:
        self.artifacts[name] = (data, content_type)

    async def progress(self, text: str) -> None:
        self.partials.append(text)


def make_ctx(
    server: FakeOpenAI, rec: Recorder, settings: Settings | None = None, max_rounds: int = 5, **config: Any
) -> AgentContext:
    config.setdefault("base_url", server.url)
    config.setdefault("model", "fake-model")
    config.setdefault("api_key", KEY)
    start = RunStart(
        run_id="r1",
        task_id="t1",
        run_number=1,
        task_name="Write a haiku",
        task_description="About NATS",
        agent="openai",
        agent_config=config,
        max_rounds=max_rounds,
    )
    ctx = AgentContext(start, artifact_writer=rec.write, settings=settings)
    ctx._progress = rec.progress
    return ctx


async def run_agent(ctx: AgentContext) -> tuple[dict[str, Any], Any]:
    """Plan, execute every step and finalize, as the runner does (approval aside)."""
    agent = OpenAIAgent()
    try:
        plan = await agent.plan(ctx)
        ctx.plan = plan
        for i, step in enumerate(plan["steps"]):
            ctx.outputs.append(await agent.execute_step(ctx, i, step))
        return plan, await agent.finalize(ctx, ctx.outputs)
    finally:
        await agent.aclose()


async def test_normal_run_plans_streams_steps_and_reports_usage_and_cost(server: FakeOpenAI) -> None:
    server.script(
        Reply.plan("Find facts", "Write it"),
        Reply.chat("NATS is fast, see https://nats.io/about.", chunk_chars=3, delay_s=0.02),
        Reply.chat("Subjects flow / streams remember", usage=(40, 20)),
    )
    rec = Recorder()
    prices = parse_prices('{"fake-*": {"prompt": 1.0, "completion": 2.0}}')
    settings = Settings(model=ModelDefaults(prices=prices))
    ctx = make_ctx(server, rec, settings=settings)
    plan, results = await run_agent(ctx)

    assert plan == {
        "steps": [
            {"title": "Find facts", "description": "Do find facts"},
            {"title": "Write it", "description": "Do write it"},
        ]
    }
    reqs = server.chat_requests()
    assert len(reqs) == 3
    first = reqs[0]
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert first.json["model"] == "fake-model" and first.json["stream"] is True
    assert first.json["stream_options"] == {"include_usage": True}
    fmt = first.json["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    items = fmt["json_schema"]["schema"]["properties"]["steps"]["items"]
    assert set(items["properties"]) == {"title", "description"}
    assert "Write a haiku" in first.user_text and "About NATS" in first.user_text
    # Each step gets the step's context and the earlier steps' outputs.
    assert "carry out step 1: Find facts" in reqs[1].user_text
    assert "carry out step 2: Write it" in reqs[2].user_text
    assert "NATS is fast" in reqs[2].user_text and "response_format" not in reqs[2].json

    assert results["steps_completed"] == 2 and results["model"] == "fake-model"
    assert results["outputs"][1]["output"] == "Subjects flow / streams remember"
    assert ctx.usage is not None
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (11 + 11 + 40, 7 + 7 + 20)
    assert ctx.usage.cost_usd == pytest.approx((62 * 1.0 + 34 * 2.0) / 1e6)
    # Streamed: the text so far was handed out while the tokens arrived.
    step1 = [p for p in rec.partials if p.startswith("NAT")]
    assert len(step1) >= 3 and step1[-1] == "NATS is fast, see https://nats.io/about."
    assert all(a != b and b.startswith(a) for a, b in itertools.pairwise(step1))
    assert "result.md" in rec.artifacts and rec.artifacts["result.md"][1] == "text/markdown"
    assert b"## 2. Write it" in rec.artifacts["result.md"][0]
    assert json.loads(rec.artifacts["sources.json"][0]) == [
        {"url": "https://nats.io/about", "cited_in_steps": [1]}
    ]


async def test_malformed_plan_is_retried_with_the_error_then_fails_clearly(server: FakeOpenAI) -> None:
    server.script(Reply.chat("Sure! Here is my plan: step one, step two"), Reply.plan("Only step"))
    rec = Recorder()
    plan = await OpenAIAgent().plan(make_ctx(server, rec))
    assert plan == {"steps": [{"title": "Only step", "description": "Do only step"}]}
    retry = server.chat_requests()[1].json["messages"]
    assert retry[-2] == {"role": "assistant", "content": "Sure! Here is my plan: step one, step two"}
    assert "not valid" in retry[-1]["content"] and "not JSON" in retry[-1]["content"]

    server.reset()
    server.script(
        Reply.chat('{"steps": []}'),
        Reply.chat('{"plan": "nope"}'),
        Reply.chat('{"steps": [{"title": "a", "description": "b"}, {"title": "c", "description": "d"}]}'),
    )
    with pytest.raises(
        AgentError, match=r"no valid plan in 3 attempts; last: the plan has 2 steps; at most 1"
    ):
        await OpenAIAgent().plan(make_ctx(server, rec, max_rounds=1))
    assert len(server.chat_requests()) == 3


def test_plan_parsing_accepts_fences_and_rejects_bad_shapes() -> None:
    fenced = '```json\n{"steps": [{"title": " A ", "description": "x"}]}\n```'
    assert parse_plan(fenced, 5) == {"steps": [{"title": "A", "description": "x"}]}
    for bad, why in [
        ("", "empty"),
        ("[1, 2]", "schema"),
        ('{"steps": [{"title": ""}]}', "empty title"),
        ('{"steps": [{"title": "a", "extra": 1}]}', "schema"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_plan(bad, 5)


async def test_429_then_success_honours_retry_after(server: FakeOpenAI) -> None:
    server.script(Reply.error(429, "slow down", retry_after="1"), Reply.chat("finally"))
    client = ChatClient(server.url, KEY, timeout_s=5, max_retries=2)
    try:
        done = await client.complete([{"role": "user", "content": "hi"}], model="m")
    finally:
        await client.aclose()
    assert done.text == "finally" and (done.prompt_tokens, done.completion_tokens) == (11, 7)
    first, second = server.chat_requests()
    assert second.at - first.at >= 0.95, "Retry-After: 1 was honoured"


async def test_5xx_and_dropped_connections_are_retried_then_give_up(server: FakeOpenAI) -> None:
    server.script(Reply.error(503, "overloaded"), Reply.error(500, "oops"), Reply.chat("ok"))
    client = ChatClient(server.url, KEY, timeout_s=5, max_retries=3, backoff_base_s=0.01)
    try:
        assert (await client.complete([{"role": "user", "content": "x"}], model="m")).text == "ok"
        server.script(*[Reply.error(502, "bad gateway")] * 3)
        with pytest.raises(ModelError, match=r"HTTP 502 Bad Gateway \(gave up after 3 attempts\)$"):
            await ChatClient(server.url, KEY, max_retries=2, backoff_base_s=0.01, http=client._http).complete(
                [{"role": "user", "content": "x"}], model="m"
            )
    finally:
        await client.aclose()
    # Nothing listens here: a connection error, retried, then a clear error.
    dead = ChatClient("http://127.0.0.1:9/v1", KEY, timeout_s=2, max_retries=1, backoff_base_s=0.01)
    with pytest.raises(
        ModelError, match=r"127\.0\.0\.1:9 unreachable: ConnectError.*gave up after 2 attempts"
    ):
        await dead.complete([{"role": "user", "content": "x"}], model="m")
    await dead.aclose()


async def test_client_errors_fail_at_once_and_never_show_the_key(server: FakeOpenAI) -> None:
    server.script(Reply.error(401, f"Incorrect API key provided: {KEY}"))
    client = ChatClient(server.url, KEY, max_retries=3)
    with pytest.raises(ModelError) as err:
        await client.complete([{"role": "user", "content": "x"}], model="m")
    await client.aclose()
    assert str(err.value) == f"model server 127.0.0.1:{server.port} answered HTTP 401 Unauthorized"
    assert len(server.chat_requests()) == 1, "a 401 is not retried"


MARKER = "MARKER-internal-7f3a"


@pytest.mark.parametrize(
    ("replies", "error"),
    [
        (
            [Reply.error(403, MARKER, reason=MARKER, headers={"X-Data": MARKER})],
            "answered HTTP 403 Forbidden$",
        ),
        ([Reply.error(599, MARKER, reason=MARKER)], "answered HTTP 599$"),
        (
            [Reply.error(503, MARKER, reason=MARKER)] * 2,
            r"HTTP 503 Service Unavailable \(gave up after 2 attempts\)$",
        ),
        (
            [Reply.error(200, MARKER)],
            r"^model server sent an unreadable completion \(not a chat completion\)$",
        ),
        (
            [Reply.stream(json.dumps({"error": {"message": MARKER}}))],
            "^model server reported an error while streaming$",
        ),
        (
            [Reply.stream(f"<html>{MARKER}</html>")],
            r"^model server sent an unreadable stream chunk \(not JSON\)$",
        ),
        (
            [Reply.raw(f"SSH-2.0-{MARKER}\r\n\r\n")] * 2,
            r"unreachable: RemoteProtocolError \(gave up after 2 attempts\)$",
        ),
    ],
    ids=[
        "status",
        "unknown-status",
        "retried",
        "not-a-completion",
        "stream-error",
        "stream-garbage",
        "not-http",
    ],
)
async def test_what_a_server_answers_is_never_quoted(
    server: FakeOpenAI, replies: list[Reply], error: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A task may point the client at any service: its answer reaches errors and logs as a status only."""
    caplog.set_level(logging.DEBUG)
    server.script(*replies)
    client = ChatClient(server.url, KEY, max_retries=1, backoff_base_s=0.01)
    with pytest.raises(ModelError, match=error) as err:
        await client.complete([{"role": "user", "content": "x"}], model="m")
    await client.aclose()
    assert MARKER not in str(err.value) and MARKER not in caplog.text
    assert KEY not in str(err.value) and KEY not in caplog.text


async def test_a_usage_count_that_is_no_number_counts_zero(server: FakeOpenAI) -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": MARKER}
    server.script(Reply.stream(json.dumps({"choices": [{"delta": {"content": "hi"}}], "usage": usage})))
    client = ChatClient(server.url, KEY)
    done = await client.complete([{"role": "user", "content": "x"}], model="m")
    await client.aclose()
    assert (done.text, done.prompt_tokens, done.completion_tokens) == ("hi", 3, 0)


async def test_a_task_naming_another_server_gets_the_runner_key_only_if_allowed(server: FakeOpenAI) -> None:
    other = "http://localhost:1/v1"  # never contacted: the run is refused first
    settings = Settings(model=ModelDefaults(base_url=server.url, api_key="sk-runner-key", model="m"))
    with pytest.raises(
        AgentConfigError, match=r"^agent_config\.base_url is not a model API the runner sends"
    ):
        await OpenAIAgent().plan(
            make_ctx(server, Recorder(), settings=settings, base_url=other, api_key=None)
        )
    assert server.requests == []
    server.script(Reply.plan("One"))
    same = server.url + "/"  # the same server, spelled differently
    await OpenAIAgent().plan(make_ctx(server, Recorder(), settings=settings, base_url=same, api_key=None))
    assert server.chat_requests()[0].headers["authorization"] == "Bearer sk-runner-key"
    # A runner without a key has none to protect: the task's server is asked without one.
    server.reset()
    server.script(Reply.plan("One"))
    bare = Settings(model=ModelDefaults(model="m"))
    await OpenAIAgent().plan(make_ctx(server, Recorder(), settings=bare, api_key=None))
    assert "authorization" not in server.chat_requests()[0].headers


async def test_a_hanging_server_times_out(server: FakeOpenAI) -> None:
    server.script(Reply.hang(), Reply.hang())
    ctx = make_ctx(server, Recorder(), timeout_s=0.3, max_retries=1)
    began = time.monotonic()
    with pytest.raises(
        ModelError, match=r"timed out waiting for an answer \(0\.3s\) \(gave up after 2 attempts\)"
    ):
        await OpenAIAgent().execute_step(ctx, 0, {"title": "x", "description": ""})
    assert time.monotonic() - began < 5
    await eventually(lambda: len(server.disconnects) == 2, 5, "the server sees both closes")


async def test_cancel_during_streaming_closes_the_connection_at_once(server: FakeOpenAI) -> None:
    server.script(Reply.drip(0.02))
    rec = Recorder()
    agent = OpenAIAgent()
    task = asyncio.create_task(agent.execute_step(make_ctx(server, rec), 0, {"title": "x"}))
    await eventually(lambda: len(rec.partials) >= 2, 5, "tokens streaming")
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await agent.aclose()
    await eventually(lambda: bool(server.disconnects), 5, "the server sees the close")
    assert server.disconnects[0] - cancelled_at < 1.0


async def test_non_streaming_server_without_usage_is_estimated(server: FakeOpenAI) -> None:
    server.script(Reply.plan("One", usage=None), Reply.chat("x" * 400, usage=None))
    rec = Recorder()
    ctx = make_ctx(server, rec, stream=False, artifacts=False)
    _plan, results = await run_agent(ctx)
    assert [r.json["stream"] for r in server.chat_requests()] == [False, False]
    assert "stream_options" not in server.chat_requests()[0].json
    assert results["usage_estimated"] is True and rec.artifacts == {} and rec.partials == []
    assert ctx.usage is not None and ctx.usage.completion_tokens >= 100 and ctx.usage.cost_usd == 0.0


async def test_runner_defaults_fill_in_and_bad_config_is_named(server: FakeOpenAI) -> None:
    server.script(Reply.plan("One"))
    settings = Settings(model=ModelDefaults(base_url=server.url, api_key="sk-from-env", model="env-model"))
    start = RunStart(run_id="r", task_id="t", run_number=1, task_name="x", agent_config={})
    agent = OpenAIAgent()
    await agent.plan(AgentContext(start, settings=settings))
    await agent.aclose()
    req = server.chat_requests()[0]
    assert req.json["model"] == "env-model" and req.headers["authorization"] == "Bearer sk-from-env"

    rec = Recorder()
    with pytest.raises(
        AgentConfigError, match=r"^invalid agent_config: Object contains unknown field `modle`"
    ):
        await OpenAIAgent().plan(make_ctx(server, rec, modle="typo"))
    with pytest.raises(AgentConfigError, match=r"no model: set agent_config\.model, or OPENAI_MODEL"):
        await OpenAIAgent().plan(AgentContext(start))
    with pytest.raises(AgentConfigError, match=r"invalid agent_config\.temperature"):
        await OpenAIAgent().plan(make_ctx(server, rec, temperature=5))


def test_retry_after_forms_and_backoff_bounds() -> None:
    import httpx

    assert retry_after_s(httpx.Headers({"retry-after": "2"})) == 2
    assert retry_after_s(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    date = "Wed, 21 Oct 2015 07:28:10 GMT"
    assert retry_after_s(httpx.Headers({"retry-after": date}), now=1445412480.0) == 10
    assert retry_after_s(httpx.Headers({"retry-after": "soon"})) is None
    assert retry_after_s(httpx.Headers({})) is None
    for attempt in range(1, 10):
        delay = backoff_s(attempt, 0.5, 20)
        cap = min(20, 0.5 * 2 ** (attempt - 1))
        assert cap / 2 <= delay <= cap


def test_prices_table() -> None:
    defaults = ModelDefaults(
        prices=parse_prices('{"gpt-4o": [2.5, 10], "gpt-4o-mini": [0.15, 0.6], "gpt-*": [1, 1]}')
    )
    assert defaults.price("gpt-4o-mini") == (0.15, 0.6)
    assert defaults.price("gpt-4.1") == (1, 1)
    assert defaults.price("llama3") is None
    with pytest.raises(ValueError, match="RUNNER_MODEL_PRICES"):
        parse_prices('{"m": {"prompt": -1, "completion": 0}}')
    with pytest.raises(ValueError, match="RUNNER_MODEL_PRICES"):
        parse_prices("[1, 2]")

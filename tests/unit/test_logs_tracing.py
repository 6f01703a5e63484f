"""Log lines (JSON and text, the run's ids) and tracing's off switch, in a child process each so the
test's own logging and OpenTelemetry state are left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parents[2]

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging
    from agentbus.common.logs import bind_run, run_context, run_fields, setup_logging

    setup_logging("runner", "INFO", FMT)
    log = logging.getLogger("agentbus.test")
    log.info("started")
    with run_context("t1", "r1", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"):
        log.info("run r1 taken")

        async def child():
            log.info("inside a task of the run")

        asyncio.run(child())
    log.info("decided", extra=run_fields("t2", "r2"))

    async def handler():
        bind_run("t3", "r3")
        log.info("bound")

    asyncio.run(handler())
    log.info("after: no run")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    """
)


def run(fmt: str, **env: str) -> list[str]:
    code = f"FMT = {fmt!r}\n" + SCRIPT
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
        timeout=60,
    )
    return result.stderr.splitlines()


def test_json_lines_parse_and_name_the_run() -> None:
    lines = [json.loads(line) for line in run("json") if line.startswith("{")]
    by_msg = {line["msg"]: line for line in lines}
    assert by_msg["started"].keys() == {"ts", "level", "service", "logger", "msg"}
    assert by_msg["started"]["service"] == "runner" and by_msg["started"]["level"] == "INFO"
    taken = by_msg["run r1 taken"]
    assert (taken["task_id"], taken["run_id"], taken["trace_id"]) == ("t1", "r1", "a" * 32)
    assert by_msg["inside a task of the run"]["run_id"] == "r1"  # tasks inherit the context
    assert (by_msg["decided"]["task_id"], by_msg["decided"]["run_id"]) == ("t2", "r2")
    assert "trace_id" not in by_msg["decided"]
    assert by_msg["bound"]["run_id"] == "r3"
    assert "run_id" not in by_msg["after: no run"]  # neither the context nor the task's binding leak
    assert "ValueError: boom" in by_msg["failed"]["exc"]


def test_text_lines_for_a_person() -> None:
    lines = run("text")
    assert any(line.endswith("runner INFO agentbus.test: started") for line in lines), lines
    (taken,) = [line for line in lines if "run r1 taken" in line]
    assert taken.endswith(f"run r1 taken  task_id=t1 run_id=r1 trace_id={'a' * 32}")


def test_auto_is_json_when_stderr_is_not_a_terminal_and_the_variable_decides_otherwise() -> None:
    assert json.loads(run("")[0])["msg"] == "started"  # no fmt: LOG_FORMAT, else auto
    assert not run("", LOG_FORMAT="text")[0].startswith("{")


def test_tracing_is_off_by_default_and_costs_nothing() -> None:
    code = textwrap.dedent(
        """
        from agentbus.common import tracing
        assert tracing.setup_tracing("x", {}) is False
        assert tracing.setup_tracing("x", {"OTEL_TRACES_EXPORTER": "none"}) is False
        off = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
        assert tracing.setup_tracing("x", off) is False
        assert not tracing.enabled()
        assert tracing.span("a") is tracing.span("b")  # one shared no-op context, no span made
        with tracing.span("a"):
            assert tracing.traceparent() is None
        assert tracing.headers({"k": "v"}) == {"k": "v"}
        assert tracing.begin("a", parent={"traceparent": "x"}) is None
        import sys
        assert "opentelemetry.sdk.trace" not in sys.modules  # the SDK is not even imported
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tracing_on_continues_a_traceparent() -> None:
    code = textwrap.dedent(
        """
        from agentbus.common import tracing
        on = {"OTEL_TRACES_EXPORTER": "console", "AGENTBUS_TRACES_FILE": "/dev/null"}
        assert tracing.setup_tracing("x", on)
        parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
        with tracing.span("run", parent=parent):
            tp = tracing.traceparent()
            assert tp.startswith("00-" + "a" * 32 + "-") and tp.split("-")[2] != "b" * 16
            assert tracing.headers({})["traceparent"] == tp
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_model_call_is_a_span_of_the_step_that_made_it(tmp_path: Path) -> None:
    """The `openai` kind's client against a real OpenAI-compatible server on loopback; the key is
    on no span."""
    code = textwrap.dedent(
        f"""
        import asyncio
        from agentbus.common import tracing
        from agentbus.runner.agents.llm import ChatClient
        from tests.support.fake_openai import FakeOpenAI

        assert tracing.setup_tracing("agentbus-runner", {{
            "OTEL_TRACES_EXPORTER": "console", "AGENTBUS_TRACES_FILE": {str(tmp_path / "{service}.jsonl")!r}
        }})

        async def main():
            with FakeOpenAI() as server:
                client = ChatClient(server.url, "sk-test-SECRET-1234567890", timeout_s=5)
                with tracing.span("step 1/1"):
                    await client.complete([{{"role": "user", "content": "hi"}}], model="gpt-test")
                await client.aclose()

        asyncio.run(main())
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)
    text = (tmp_path / "agentbus-runner.jsonl").read_text()
    assert "SECRET" not in text
    spans = {s["name"]: s for s in map(json.loads, text.splitlines())}
    chat, step = spans["chat gpt-test"], spans["step 1/1"]
    assert chat["parent_id"] == step["context"]["span_id"] and chat["kind"] == "SpanKind.CLIENT"
    assert chat["attributes"]["gen_ai.request.model"] == "gpt-test"

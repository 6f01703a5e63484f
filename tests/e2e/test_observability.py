"""Logs a person can follow and one trace per run, across the real processes.

A system of its own, tracing on with the console exporter into one file per service: a scripted
run through approval and completion, then its lines in the three services' logs (JSON, since
their stderr is a file) and its spans in the three trace files.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import Api
from tests.support.system import System, start_system
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

FAST = {"steps": 2, "step_delay_ms": 20}


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, Path]]:
    traces = tmp_path_factory.mktemp("traces")
    sys_ = start_system(OTEL_TRACES_EXPORTER="console", AGENTBUS_TRACES_FILE=str(traces / "{service}.jsonl"))
    try:
        yield sys_, traces
    finally:
        sys_.stop()


@pytest.fixture(scope="module")
async def approved_run(traced: tuple[System, Path]) -> AsyncIterator[dict[str, Any]]:
    system, _ = traced
    api = Api(system.base_url, system.ws_url)
    try:
        task = await api.task(agent_config=FAST)
        run = await api.run(task["id"])
        await api.wait_status(run["id"], "awaiting_approval")
        r = await api.http.post(f"/api/runs/{run['id']}/approve", json={"approved": True})
        assert r.status_code == 200, r.text
        yield await api.wait_status(run["id"], "completed")
    finally:
        await api.close()


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))  # a line that looks like JSON must be JSON
    return out


def run_lines(system: System, name: str, run_id: str) -> list[str]:
    return [line["msg"] for line in json_lines(system.root / f"{name}.log") if line.get("run_id") == run_id]


async def test_log_lines_are_json_and_name_their_run(
    traced: tuple[System, Path], approved_run: dict[str, Any]
) -> None:
    system, _ = traced
    lines = json_lines(system.root / "runner0.log")
    assert lines and all({"ts", "level", "service", "logger", "msg"} <= line.keys() for line in lines)
    about = [line for line in lines if approved_run["id"] in line["msg"]]
    assert about, "the runner logged nothing about the run"
    for line in about:
        assert line["run_id"] == approved_run["id"] and line["task_id"] == approved_run["task_id"], line
        assert len(line["trace_id"]) == 32, line
    gateway = [
        line for line in json_lines(system.root / "gateway0.log") if line.get("run_id") == approved_run["id"]
    ]
    assert [line["trace_id"] for line in gateway if "approved by" in line["msg"]] == [about[0]["trace_id"]]


async def test_a_runs_life_is_logged_once_each(
    traced: tuple[System, Path], approved_run: dict[str, Any]
) -> None:
    system, _ = traced
    run_id = approved_run["id"]

    def runner_lines() -> list[str]:
        lines = run_lines(system, "runner0", run_id)
        assert any("completed after" in m for m in lines), lines
        return lines

    lines = await eventually(runner_lines, what="the run's completion in the runner's log")
    for stage in (
        "taken (delivery",
        "plan version 1 ready: 2 steps, awaits approval",
        "waiting for a decision on plan version 1",
        "woken (delivery",
        "plan approved by a person",
        "completed after",
    ):
        assert sum(stage in m for m in lines) == 1, (stage, lines)
    assert not any("Step" in m or "progress" in m for m in lines), "no line per event"
    gateway = run_lines(system, "gateway0", run_id)
    assert [m for m in gateway if "approved by" in m] == [
        f"run {run_id}: plan version 1 approved by local user (authentication off) (local)"
    ], gateway


def spans(traces: Path, service: str) -> list[dict[str, Any]]:
    path = traces / f"agentbus-{service}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_one_run_is_one_trace_across_the_three_processes(
    traced: tuple[System, Path], approved_run: dict[str, Any]
) -> None:
    _, traces = traced
    run_id = approved_run["id"]

    def runner_spans() -> list[dict[str, Any]]:
        found = [s for s in spans(traces, "runner") if s["attributes"].get("agentbus.run_id") == run_id]
        assert len(found) == 2, found  # taken until parked, then woken until completed
        return found

    runs = await eventually(runner_spans, what="the run's spans")
    (request,) = [
        s for s in spans(traces, "gateway") if s["context"]["trace_id"] == runs[0]["context"]["trace_id"]
    ]
    trace_id = request["context"]["trace_id"]
    assert request["name"] == "POST /api/runs" and request["parent_id"] is None
    assert request["resource"]["attributes"]["service.name"] == "agentbus-gateway"
    for run in runs:
        assert run["context"]["trace_id"] == trace_id and run["parent_id"] == request["context"]["span_id"]
    in_trace = [s for s in spans(traces, "runner") if s["context"]["trace_id"] == trace_id]
    by_id = {s["context"]["span_id"]: s for s in [request, *in_trace]}
    steps = [s for s in in_trace if s["name"].startswith("step ")]
    assert sorted(s["name"] for s in steps) == ["step 1/2", "step 2/2"]
    assert all(by_id[s["parent_id"]] in runs for s in steps)
    assert {s["name"] for s in in_trace} >= {"plan", "finalize"}

    def recorded() -> list[dict[str, Any]]:
        mine = [s for s in spans(traces, "metrics") if s["context"]["trace_id"] == trace_id]
        # Each event the metrics service records (the run's end, at least), under the runner's span
        # that published it: the run's second span publishes `completion`.
        assert mine and all(s["parent_id"] in by_id for s in mine), mine
        assert runs[1]["context"]["span_id"] in {s["parent_id"] for s in mine}, mine
        return mine

    await eventually(recorded, what="the metrics service's recording spans in the run's trace")


async def test_a_callers_traceparent_is_continued(traced: tuple[System, Path]) -> None:
    system, traces = traced
    trace_id, caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    api = Api(system.base_url, system.ws_url)
    try:
        task = await api.task(agent_config=FAST, require_approval=False)
        r = await api.http.post(
            "/api/runs", json={"task_id": task["id"]}, headers={"traceparent": f"00-{trace_id}-{caller}-01"}
        )
        assert r.status_code == 201, r.text
        await api.wait_status(r.json()["id"], "completed")
    finally:
        await api.close()
    (request,) = [s for s in spans(traces, "gateway") if s["context"]["trace_id"] == f"0x{trace_id}"]
    assert request["parent_id"] == f"0x{caller}"

    def taken() -> list[dict[str, Any]]:
        return [s for s in spans(traces, "runner") if s["parent_id"] == request["context"]["span_id"]]

    await eventually(taken, what="the runner's span under the caller's trace")


async def test_a_held_run_keeps_the_trace_of_its_request(traced: tuple[System, Path]) -> None:
    """A run held under `max_concurrent_runs` is queued later (by the release when the first
    ends), yet its runner continues the trace of the POST that created it."""
    system, traces = traced
    api = Api(system.base_url, system.ws_url)
    try:
        task = await api.task(agent_config=FAST, max_concurrent_runs=1)
        first = await api.run(task["id"])
        await api.wait_status(first["id"], "awaiting_approval")
        second = await api.run(task["id"])
        assert (await api.get_run(second["id"]))["status"] == "pending"
        r = await api.http.post(f"/api/runs/{first['id']}/approve", json={"approved": True})
        assert r.status_code == 200, r.text
        await api.wait_status(second["id"], "awaiting_approval")
    finally:
        await api.close()

    def runner_span() -> dict[str, Any]:
        (run,) = [
            s for s in spans(traces, "runner") if s["attributes"].get("agentbus.run_id") == second["id"]
        ]
        return run

    run = await eventually(runner_span, what="the held run's span")
    (request,) = [s for s in spans(traces, "gateway") if s["context"]["span_id"] == run["parent_id"]]
    assert (
        request["name"] == "POST /api/runs" and request["context"]["trace_id"] == run["context"]["trace_id"]
    )
    first_spans = [
        s for s in spans(traces, "runner") if s["attributes"].get("agentbus.run_id") == first["id"]
    ]
    assert first_spans and all(s["context"]["trace_id"] != run["context"]["trace_id"] for s in first_spans)

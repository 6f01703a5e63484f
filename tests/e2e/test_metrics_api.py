"""`/api/metrics` as docs/api.md (Metrics) describes it, over HTTP against the real processes: a
metric posted by hand, the overall and per-agent summaries, series, and the runner's time_to_plan."""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path

import pytest

from tests.support.client import Api
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

# The OpenAPI tools' own environment (`make install`; tools/openapi/requirements.in says why).
OPENAPI_PYTHON = Path(__file__).resolve().parents[2] / ".venv-openapi" / "bin" / "python"

POINT_KEYS = {"t", "count", "sum", "min", "max", "avg", "p95"}
STAT_KEYS = {"count", "min", "max", "avg", "last", "sum", "p50", "p95"}


async def test_post_a_metric_and_read_it_back(api: Api) -> None:
    task = await api.task(require_approval=False, agent_config={"steps": 1, "step_delay_ms": 0})
    run = await api.run(task["id"])
    await api.wait_status(run["id"], "completed")

    async def recorded() -> dict | None:
        body = (await api.http.get(f"/api/metrics/run/{run['id']}/summary")).json()
        return body if "duration" in body["metrics"] else None

    summary = await eventually(recorded, what="the run's metrics")
    assert set(summary["metrics"]["duration"]) == STAT_KEYS
    assert summary["metrics"]["time_to_plan"]["count"] == 1  # the runner reports it

    body = {"run_id": run["id"], "name": "quality.score", "value": 0.5, "unit": "ratio", "labels": {"k": "v"}}
    r = await api.http.post("/api/metrics", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["task_id"], created["run_id"], created["name"], created["value"]) == (
        task["id"],
        run["id"],
        "quality.score",
        0.5,
    )
    assert (created["metric_type"], created["labels"]) == ("gauge", {"k": "v"})
    assert (await api.http.get(f"/api/metrics/{created['id']}")).json() == created
    assert (await api.http.post("/api/metrics", json=body)).status_code == 409
    audit = (await api.http.get("/api/audit", params={"action": "metric.create"})).json()
    assert created["id"] in {e["target_id"] for e in audit["items"]}

    bads = ({"name": "Upper"}, {"name": "_x"}, {"name": "a" * 65}, {"value": "1"}, {"metric_type": "x"})
    # Finite but past METRIC_VALUE_MAX: two of them would sum to infinity, which JSON cannot say.
    for bad in (*bads, {"value": 1.0000001e15}, {"value": -3.5e276}):
        r = await api.http.post("/api/metrics", json=body | bad)
        assert r.status_code == 400, (bad, r.text)
    r = await api.http.post(
        "/api/metrics",
        content=b'{"run_id": "%s", "name": "big", "value": 1e400}' % run["id"].encode(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    r = await api.http.post("/api/metrics", json=body | {"run_id": "nope"})
    assert r.status_code == 404, r.text

    run_summary = (await api.http.get(f"/api/metrics/run/{run['id']}/summary")).json()
    assert run_summary["metrics"]["quality.score"] == {
        "count": 1,
        "min": 0.5,
        "max": 0.5,
        "avg": 0.5,
        "last": 0.5,
        "sum": 0.5,
        "p50": 0.5,
        "p95": 0.5,
    }
    series = (
        await api.http.get("/api/metrics/series", params={"name": "quality.score", "task_id": task["id"]})
    ).json()
    assert series["name"] == "quality.score" and series["bucket"] == "1h"
    assert [(p["count"], p["sum"]) for p in series["points"]] == [(1, 0.5)]
    assert set(series["points"][0]) == POINT_KEYS

    # Deleting the task takes the hand-made metric too.
    assert (await api.http.delete(f"/api/tasks/{task['id']}")).status_code == 204

    async def gone() -> bool:
        body = (await api.http.get(f"/api/metrics/task/{task['id']}/summary")).json()
        return body["metric_count"] == 0

    await eventually(gone, what="metrics deleted with the task")


async def test_overall_and_agent_summaries_and_series(api: Api) -> None:
    task = await api.task(require_approval=False, agent_config={"steps": 2, "step_delay_ms": 0})
    run = await api.run(task["id"])
    await api.wait_status(run["id"], "completed")

    async def counted() -> bool:
        page = (await api.http.get("/api/metrics", params={"run_id": run["id"], "limit": 1})).json()
        return page["total"] > 0

    await eventually(counted, what="the run's metrics")
    body = (await api.http.get("/api/metrics/agent/scripted/summary")).json()
    runs = body["runs"]
    assert set(runs) == {"total", "completed", "failed", "rejected", "cancelled", "timeout", "success_rate"}
    assert runs["total"] >= 1 and runs["completed"] >= 1
    assert runs["total"] == sum(runs[k] for k in ("completed", "failed", "rejected", "cancelled", "timeout"))
    assert math.isclose(runs["success_rate"], runs["completed"] / runs["total"])
    assert set(body["metrics"]["duration"]) == STAT_KEYS
    overall = (await api.http.get("/api/metrics/summary")).json()
    assert overall["runs"]["total"] >= runs["total"] and overall["metric_count"] >= body["metric_count"]
    window = (await api.http.get("/api/metrics/summary", params={"until": "2000-01-01T00:00:00Z"})).json()
    assert window == {
        "metric_count": 0,
        "runs": {
            "total": 0,
            "completed": 0,
            "failed": 0,
            "rejected": 0,
            "cancelled": 0,
            "timeout": 0,
            "success_rate": None,
        },
        "metrics": {},
    }
    nobody = (await api.http.get("/api/metrics/agent/nobody.here/summary")).json()
    assert nobody["metric_count"] == 0

    for bucket in ("1m", "5m", "1h", "1d"):
        r = await api.http.get(
            "/api/metrics/series", params={"name": "steps", "task_id": task["id"], "bucket": bucket}
        )
        assert r.status_code == 200, r.text
        assert [(p["count"], p["max"]) for p in r.json()["points"]] == [(1, 2)]
    for params in ({"name": "steps", "bucket": "2h"}, {"name": "Steps"}, {}, {"name": "steps", "since": "x"}):
        assert (await api.http.get("/api/metrics/series", params=params)).status_code == 400, params
    assert (await api.http.get("/api/metrics/agent/bad kind/summary")).status_code == 400


async def test_the_live_openapi_document_is_valid(api: Api) -> None:
    r = await api.http.get("/openapi.json")
    assert r.status_code == 200
    document = r.json()
    # openapi-spec-validator exits non-zero, naming the violation, on anything against OpenAPI 3.1.
    code, out = await _python(
        "-c",
        "import json, sys; from openapi_spec_validator import validate; validate(json.load(sys.stdin))",
        stdin=r.content,
    )
    assert code == 0, out
    # Every metrics route declares the shape of what it answers, and each error status it can return.
    paths = {p: item for p, item in document["paths"].items() if p.startswith("/api/metrics")}
    assert len(paths) == 7
    for path, item in paths.items():
        for method, op in item.items():
            ok = op["responses"]["201" if method == "post" else "200"]
            assert "$ref" in ok["content"]["application/json"]["schema"], (method, path)
            assert {"400", "401", "403", "502", "503"} <= set(op["responses"]), (method, path)
    assert {"404", "409", "413", "415", "429"} <= set(paths["/api/metrics"]["post"]["responses"])


async def _python(*args: str, env: dict[str, str] | None = None, stdin: bytes = b"") -> tuple[int, str]:
    """Runs the OpenAPI tools' interpreter with `args`: its exit code and what it printed (stdout and
    stderr)."""
    assert OPENAPI_PYTHON.is_file(), f"{OPENAPI_PYTHON} is missing: `make install` makes it"
    proc = await asyncio.create_subprocess_exec(
        str(OPENAPI_PYTHON),
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(stdin)
    return proc.returncode or 0, out.decode(errors="replace")


async def test_a_client_generated_from_the_live_document_builds_and_imports(api: Api, tmp_path: Path) -> None:
    """openapi-python-client reads every operation of the live document: it warns of each response
    or schema it cannot turn into code (and leaves it out of the client), and fails on any warning
    here. Its post-processing (ruff, from the tools' environment) runs too; every generated module
    imports there (the tools' environment has what a generated client needs: httpx, attrs, dateutil)."""
    r = await api.http.get("/openapi.json")
    assert r.status_code == 200
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(r.json()))
    package = tmp_path / "agentbus_client"
    # The tools' environment first on PATH (ruff, for the generator's post-processing).
    env = {**os.environ, "PATH": f"{OPENAPI_PYTHON.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    code, out = await _python(
        "-m",
        "openapi_python_client",
        "generate",
        "--path",
        str(document),
        "--output-path",
        str(package),
        "--meta",
        "none",
        "--fail-on-warning",
        env=env,
    )
    assert code == 0, out
    # Nothing but its progress line: a warning (or a skipped post-processing step) prints more.
    assert [line for line in out.splitlines() if line.strip()] == [f"Generating {package}"], out
    assert (package / "models" / "error.py").is_file()  # the gateway's one error shape, as a model

    imports = (
        "import importlib, pkgutil, agentbus_client as p; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]"
    )
    code, out = await _python("-c", imports, env={**env, "PYTHONPATH": str(tmp_path)})
    assert code == 0, out

"""The `agentbus` command line as a script uses it: a process per command, `--json` output and the
exit codes (0 completed, 1 failed or error, 2 usage, 3 rejected/cancelled/timeout, 4 not found or
not allowed); then every other command once, in process, against a system with authentication on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from agentbus.client import Client, RunEvent, event_type
from agentbus.client.cli import app
from tests.e2e.conftest import ADMIN
from tests.support.system import System

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
AGENTBUS = str(ROOT / ".venv" / "bin" / "agentbus")
FAST = '{"steps": 2, "step_delay_ms": 20}'


def cli_env(system: System, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AGENTBUS_URL", "AGENTBUS_TOKEN")}
    return {**env, "AGENTBUS_URL": system.base_url, "NO_COLOR": "1", "COLUMNS": "200", **extra}


def task(system: System, **fields: Any) -> str:
    r = httpx.post(f"{system.base_url}/api/tasks", json={"name": "cli", **fields}, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def takewhile_open(events: Iterator[RunEvent]) -> Iterator[RunEvent]:
    """The events up to the first approval_required."""
    for event in events:
        yield event
        if event_type(event) == "approval_required":
            return


def test_exit_codes_and_json(system: System) -> None:
    done = task(system, agent_config={"steps": 2, "step_delay_ms": 20})
    fails = task(system, require_approval=False, agent_config={"steps": 2, "fail_at_step": 1})
    waits = task(system, approval_timeout_s=1, agent_config={"steps": 2})
    commands = {
        "completed": ["runs", "start", done, "--watch", "--yes", "--json"],
        "failed": ["runs", "start", fails, "--watch", "--json"],
        # No terminal on stdin: no prompt, as with --no-prompt; the approval deadline passes.
        "timeout": ["runs", "start", waits, "--watch"],
        "unknown run": ["runs", "watch", "no-such-run", "--json"],
        "bad option": ["tasks", "list", "--limit", "many"],
    }
    # All at once: each is mostly its interpreter starting up.
    procs = {
        name: subprocess.Popen(
            [AGENTBUS, *args],
            env=cli_env(system),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands.items()
    }
    res = {name: (p.wait(60), *p.communicate()) for name, p in procs.items()}
    for name, (_code, stdout, stderr) in res.items():
        assert "Traceback" not in stdout + stderr, (name, stderr)
    codes = {name: code for name, (code, _, _) in res.items()}
    assert codes == {
        "completed": 0,
        "failed": 1,
        "timeout": 3,
        "unknown run": 4,
        "bad option": 2,
    }, {name: r[2][-300:] for name, r in res.items()}

    run, *events = [json.loads(line) for line in res["completed"][1].splitlines()]
    assert run["task_id"] == done and [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["event_type"] for e in events][-1] == "completion" and "approved" in [
        e["event_type"] for e in events
    ]
    assert json.loads(res["failed"][1].splitlines()[-1])["event_type"] == "failure"
    assert "Approve this plan?" not in res["timeout"][1] and "timeout" in res["timeout"][2]
    assert json.loads(res["unknown run"][1]) == {"status_code": 404, "detail": "run no-such-run not found"}

    # examples/watch.py, a thin use of the client: the gateway from GATEWAY_PORT, the run's outcome
    # as its exit code, an unknown run a message.
    port = system.base_url.rsplit(":", 1)[1]
    watch_env = {**cli_env(system), "GATEWAY_PORT": port}
    del watch_env["AGENTBUS_URL"]
    watched = {
        "completed": (run["id"], 0),
        "failed": (json.loads(res["failed"][1].splitlines()[0])["id"], 1),
        "unknown": ("no-such-run", 4),
    }
    example = str(ROOT / "examples" / "watch.py")
    procs = {
        name: subprocess.Popen(
            [sys.executable, example, run_id],
            env=watch_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (run_id, _) in watched.items()
    }
    outcomes = {name: (p.wait(60), *p.communicate()) for name, p in procs.items()}
    assert {n: o[0] for n, o in outcomes.items()} == {n: w[1] for n, w in watched.items()}, outcomes
    assert "not found" in outcomes["unknown"][2] and "Traceback" not in outcomes["unknown"][2]
    assert outcomes["failed"][1].splitlines()[-1].split()[1] == "failure"
    assert "not found" in res["unknown run"][2] and "--limit" in res["bad option"][2]


def test_every_command(secured: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    env = {"AGENTBUS_URL": secured.base_url, "AGENTBUS_TOKEN": ADMIN, "COLUMNS": "200"}

    def ok(*args: str) -> Any:
        result = runner.invoke(app, [*args, "--json"], env=env)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return json.loads(result.stdout.splitlines()[-1])

    task_id = ok(
        "tasks", "create", "every command", "--agent-config", FAST.replace("}", ', "artifact": true}')
    )["id"]
    assert ok("tasks", "show", task_id)["name"] == "every command"
    assert ok("tasks", "update", task_id, "--description", "d")["description"] == "d"
    assert task_id in [t["id"] for t in ok("tasks", "list", "--limit", "100")["items"]]
    run_id = ok("runs", "start", task_id, "--label", "k=v")["id"]
    assert ok("runs", "watch", run_id, "--yes")["event_type"] == "completion"
    assert ok("runs", "show", run_id)["status"] == "completed"
    assert [r["id"] for r in ok("runs", "list", "--task", task_id)["items"]] == [run_id]
    assert ok("runs", "logs", run_id, "--since", "7")["items"][0]["seq"] == 8
    (artifact,) = ok("runs", "artifacts", run_id)
    assert ok("runs", "download", run_id, artifact["name"])["size"] == artifact["size"]
    assert (tmp_path / artifact["name"]).stat().st_size == artifact["size"]
    assert ok("approvals", "list", "--task", task_id)["items"][0]["status"] == "approved"
    assert ok("metrics", "summary", "--task", task_id)["metrics"]["steps"]["last"] == 2
    assert ok("metrics", "summary")["runs"]["total"] >= 1
    assert ok("metrics", "series", "duration", "--task", task_id, "--bucket", "1d")["points"][0]["count"] == 1

    other = ok("runs", "start", task_id)["id"]
    with Client(secured.base_url, ADMIN) as api:  # until it asks for a decision
        assert any(event_type(e) == "approval_required" for e in takewhile_open(api.watch(other)))
    rejected = runner.invoke(app, ["runs", "reject", other, "--feedback", "no"], env=env)
    assert rejected.exit_code == 0, rejected.output
    watched = runner.invoke(app, ["runs", "watch", other], env=env)
    assert watched.exit_code == 3 and "rejected" in watched.output
    third = ok("runs", "start", task_id, "--no-approval", "--agent-config", '{"steps": 100}')["id"]
    assert ok("runs", "cancel", third, "--reason", "enough")["id"] == third
    assert runner.invoke(app, ["runs", "approve", third], env=env).exit_code == 1  # 409: not waiting

    key = ok("keys", "create", "cli viewer", "--role", "viewer")
    assert key["key"] and key["id"] in [k["id"] for k in ok("keys", "list", "--limit", "100")["items"]]
    refused = runner.invoke(app, ["tasks", "delete", task_id], env={**env, "AGENTBUS_TOKEN": key["key"]})
    assert refused.exit_code == 4 and "403" in refused.output
    assert ok("keys", "revoke", key["id"]) == {"revoked": key["id"]}
    assert ok("tasks", "delete", task_id) == {"deleted": task_id}
    gone = runner.invoke(app, ["tasks", "show", task_id], env=env)
    assert gone.exit_code == 4 and re.search(r"not found", gone.output)
    assert runner.invoke(app, ["runs", "show"], env=env).exit_code == 2
    nowhere = runner.invoke(app, ["tasks", "list", "--url", "http://127.0.0.1:1"], env=env)
    assert nowhere.exit_code == 1 and "cannot reach the gateway" in nowhere.output
    # Hostile input: a message and an exit code, never a traceback.
    hostile = {
        ("runs", "show", "../../api/tasks"): 4,  # an id stays one path segment
        ("runs", "watch", ""): 1,
        ("tasks", "list", "--token", "tok\nen"): 2,
        ("tasks", "list", "--url", "ftp://x"): 2,
        ("tasks", "create", "x" * 201): 1,  # the gateway's 400
        ("tasks", "create", "x", "--agent-config", "[1"): 2,
    }
    for args, code in hostile.items():
        result = runner.invoke(app, list(args), env=env)
        # An exception other than SystemExit is one the command let escape (a traceback).
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
        assert result.exit_code == code and "Traceback" not in result.output, (args, result.output)


def test_readme_command_line_section_runs_as_written(system: System, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The command line and the Python client", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    (snippet,) = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    marker = "=== next block ==="
    script = "set -euo pipefail\n" + f"\necho '{marker}'\n".join(blocks)
    script += f"\necho '{marker}'\n.venv/bin/python -c \"$SNIPPET\"\n"
    env = cli_env(system, SNIPPET=snippet)
    out = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    watched, listed, python = out.stdout.split(marker)
    assert "Plan (version 1):" in watched and "3. Step 3" in watched and "Plan approved" in watched
    assert "100%" in watched and re.search(r"Run \w+ completed in", watched), watched
    assert re.search(r"completed", listed) and re.search(r"\bsteps\b", listed), listed
    first, *_, last = python.strip().splitlines()
    assert first.split() == ["1", "AnalysisStart"] and last.split()[1] == "Completion", python

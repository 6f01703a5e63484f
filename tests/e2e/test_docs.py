"""The README's commands, run as a newcomer would paste them, and `make run`'s launcher itself."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import free_port
from tests.support.system import System, launch_env

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def walkthrough_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Walkthrough", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def test_readme_walkthrough_runs_as_written(system: System, tmp_path: Path) -> None:
    blocks = walkthrough_blocks()
    assert len(blocks) >= 4
    port = system.base_url.rsplit(":", 1)[1]
    script = "set -euo pipefail\n" + "\n".join(blocks).replace("localhost:8000", f"localhost:{port}")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "AGENTBUS_WS": system.ws_url}
    out = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    task, run = json.loads(lines[0]), json.loads(lines[1])
    assert task["name"] == "hello" and run["status"] == "pending" and run["task_id"] == task["id"]
    streamed = [line.split(" ", 2)[:2] for line in lines if re.match(r"^\d+ [a-z_]+ ", line)]
    assert streamed == [
        ["1", "analysis_start"],
        ["2", "plan_ready"],
        ["3", "approval_required"],
        ["4", "approved"],
        ["5", "progress"],
        ["6", "progress"],
        ["7", "progress"],
        ["8", "completion"],
    ]
    approved = json.loads(lines[5])
    assert approved["approval"]["feedback"] == "go ahead"
    final = json.loads(lines[-2])
    assert final["status"] == "completed" and final["last_seq"] == 8
    summary = json.loads(lines[-1])
    assert summary["run_id"] == run["id"]


def test_make_run_starts_everything_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    http_port, nats_port = free_port(), free_port()
    env = launch_env(
        AGENTBUS_VAR=str(tmp_path / "var"), GATEWAY_PORT=str(http_port), NATS_PORT=str(nats_port)
    )
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # As a shell's background job starts it: SIGINT ignored. Ctrl-C must still stop everything
        # (the services run in sessions of their own and would be left running).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    seen = []
    try:
        assert proc.stdout is not None
        ready = False
        for line in proc.stdout:
            seen.append(line)
            ready = ready or "agentbus is ready" in line
            if ready and not line.strip():  # the banner ends with an empty line
                break
        assert any("agentbus is ready" in line for line in seen), "".join(seen)
        import httpx

        assert httpx.get(f"http://127.0.0.1:{http_port}/ready", timeout=5).status_code == 200
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, "".join(seen) + rest
    # The banner says who may use the gateway, and how to turn authentication on.
    banner = "".join(seen)
    assert "Authentication is off: listening on loopback (127.0.0.1) only;" in banner, banner
    assert "  AGENTBUS_ADMIN_TOKEN=$(openssl rand -hex 32) make run\n" in banner, banner
    assert (tmp_path / "var" / "gateway.db").exists() and (tmp_path / "var" / "metrics.db").exists()
    for port in (http_port, nats_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"

"""`agentbus runs start TASK --watch` in a real terminal (tmux): the plan, the approval prompt, keys
typed at it, the progress bars reaching 100%, and the exit code."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.packages import apt_install
from tests.support.system import System
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
AGENTBUS = ROOT / ".venv" / "bin" / "agentbus"
PROMPT = "Approve this plan? [y/N/e(dit feedback)]"


def ensure_tmux() -> str:
    """tmux, installed with the system's package manager when it is missing and we may (root)."""
    found, why = apt_install("tmux", "tmux")
    if found is None:
        pytest.skip(f"no terminal tests: {why}")
    return found


@pytest.fixture
def terminal(system: System) -> Iterator[Callable[[str], Callable[..., str]]]:
    """Starts a command in a tmux pane of a server of its own; yields `(keys) -> screen`."""
    tmux = ensure_tmux()
    socket = f"agentbus-test-{os.getpid()}"

    def run(*args: str) -> str:
        out = subprocess.run([tmux, "-L", socket, *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def start(command: str) -> Callable[..., str]:
        shell = f"{command}; echo EXIT=$?; sleep 600"
        run(
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "120",
            "-y",
            "50",
            "-e",
            f"AGENTBUS_URL={system.base_url}",
            shell,
        )

        def screen(*keys: str) -> str:
            if keys:
                run("send-keys", "-t", "t", *keys)
            return run("capture-pane", "-p", "-J", "-t", "t", "-S", "-")

        return screen

    try:
        yield start
    finally:
        subprocess.run([tmux, "-L", socket, "kill-server"], capture_output=True, timeout=30)


def new_task(system: System) -> str:
    body = {"name": "terminal", "agent_config": {"steps": 3, "step_delay_ms": 50}}
    r = httpx.post(f"{system.base_url}/api/tasks", json=body, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def test_watch_asks_then_shows_progress_to_100(system: System, terminal) -> None:
    screen = terminal(f"{AGENTBUS} runs start {new_task(system)} --watch")
    await eventually(lambda: PROMPT in screen(), 30, "the approval prompt")
    shown = screen()
    assert "Plan (version 1):" in shown and "3. Step 3" in shown
    screen("y", "Enter")
    done = await eventually(lambda: "EXIT=" in (s := screen()) and s, 30, "the command to end")
    assert "EXIT=0" in done and "Plan approved" in done, done
    assert "run " in done and "100%" in done and "completed in" in done, done


async def test_edit_feedback_then_reject(system: System, terminal) -> None:
    screen = terminal(f"{AGENTBUS} runs start {new_task(system)} --watch")
    await eventually(lambda: PROMPT in screen(), 30, "the approval prompt")
    screen("e", "Enter")
    await eventually(lambda: "Feedback for the next version" in screen(), 30, "the feedback question")
    screen("fewer steps please", "Enter")
    await eventually(lambda: screen().count(PROMPT) == 2, 30, "the prompt for the revised plan")
    assert "Plan sent back for revision: fewer steps please" in screen()
    assert "Plan (version 2):" in screen()
    screen("n", "Enter")
    done = await eventually(lambda: "EXIT=" in (s := screen()) and s, 30, "the command to end")
    assert "EXIT=3" in done and "Plan rejected" in done, done

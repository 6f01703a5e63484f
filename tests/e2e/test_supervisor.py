"""`make run` as a supervisor: the real launcher (scripts/run.py) with its real processes.

Its services are killed with SIGKILL one after the other during a batch of runs with approvals;
the launcher starts each again, and nothing is lost. Ctrl-C pressed twice leaves nothing running,
a second launcher refuses a ./var that is in use (leftovers included), a service that keeps
dying is retried with growing pauses, a service refused by its settings stops everything, and no
service gets another's secrets.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agentbus.common.settings import EXIT_CONFIG
from tests.e2e.test_faults import FAULT_ENV
from tests.support.client import TERMINAL, Api
from tests.support.faults import Workload, check_invariants, retry
from tests.support.servers import free_port
from tests.support.system import launch_env
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
STARTED = re.compile(r"^(\S+) started \(pid (\d+)\)$")


class MakeRun:
    """scripts/run.py in its own session, its output read line by line as it comes."""

    def __init__(self, var: Path, **env: str) -> None:
        self.http_port, self.nats_port = free_port(), free_port()
        self.env = launch_env(**env)
        self.env.update(
            AGENTBUS_VAR=str(var), GATEWAY_PORT=str(self.http_port), NATS_PORT=str(self.nats_port)
        )
        self.lines: list[str] = []
        self.done = False  # the launcher's output ended
        self.changed = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> MakeRun:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "run.py")],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.done = True
            self.changed.notify_all()

    def wait_line(self, pattern: str, after: int = 0, timeout: float = 90) -> tuple[int, re.Match[str]]:
        """The first line from index `after` on that matches, waiting for it to be printed."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for i in range(after, len(self.lines)):
                    if m := regex.search(self.lines[i]):
                        return i, m
                left = deadline - time.monotonic()
                if left <= 0 or self.done:
                    raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))
                self.changed.wait(min(left, 1.0))

    async def line(self, pattern: str, after: int = 0, timeout: float = 90) -> tuple[int, re.Match[str]]:
        """`wait_line` for async tests: the event loop (clients, the approver) goes on meanwhile."""
        return await asyncio.to_thread(self.wait_line, pattern, after, timeout)

    def pids(self) -> dict[str, int]:
        """The newest pid of each process the launcher said it started."""
        with self.changed:
            return {m[1]: int(m[2]) for line in self.lines if (m := STARTED.match(line))}

    def kill(self, name: str) -> int:
        """SIGKILL one service; return the index of the line to look for its restart after."""
        with self.changed:
            mark = len(self.lines)
        os.kill(self.pids()[name], signal.SIGKILL)
        return mark

    def output(self) -> str:
        with self.changed:
            return "\n".join(self.lines)

    def all_pids(self) -> set[int]:
        with self.changed:
            return {int(m[2]) for line in self.lines if (m := STARTED.match(line))}

    def stop(self) -> None:
        """Whatever happens in a test, nothing it started is left running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pid in self.all_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextmanager
def make_run(var: Path, **env: str) -> Iterator[MakeRun]:
    launcher = MakeRun(var, **env).start()
    try:
        yield launcher
    finally:
        launcher.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a parent that is still alive) is gone for our purposes.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()


def ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def watch_live(api: Api, run_id: str, seen: list[int]) -> None:
    """A WebSocket client like a user's: it reconnects with `since` = the last seq it got, through
    every restart, until the run's terminal event."""
    while True:
        since = seen[-1] if seen else 0
        try:
            async with api.ws(f"/ws/runs/{run_id}?since={since}") as ws:
                async for frame in ws:
                    event = json.loads(frame)
                    if event["event_type"] == "heartbeat":
                        continue
                    seen.append(event["seq"])
                    if event["event_type"] in TERMINAL:
                        return
        except (OSError, ConnectionClosed, InvalidHandshake, InvalidStatus, TimeoutError):
            await asyncio.sleep(0.2)  # the gateway is restarting: try again, as a client would


async def test_killed_services_are_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    with make_run(tmp_path / "var", **FAULT_ENV) as launcher:
        await launcher.line(r"^agentbus is ready$")
        api = Api(launcher.base_url, f"ws://127.0.0.1:{launcher.http_port}")
        work = Workload([api])
        watchers: list[asyncio.Task[None]] = []
        seen: dict[str, list[int]] = {}

        def watch(runs: list[dict[str, object]]) -> None:
            for run in runs:
                seen[str(run["id"])] = []
                watchers.append(asyncio.create_task(watch_live(api, str(run["id"]), seen[str(run["id"])])))

        try:
            await work.start(4, steps=4, delay_ms=150)
            watch(work.runs)
            for stage, name in enumerate(("runner", "gateway", "nats-server")):
                if stage:  # a fresh part of the batch for each fault, so each one hits runs in flight
                    fresh = [await retry(lambda i=i: api.run(work.tasks[i % 2]["id"])) for i in range(4)]
                    work.runs.extend(fresh)
                    watch(fresh)
                newest = [str(r["id"]) for r in work.runs[-4:]]
                await eventually(
                    lambda newest=newest: any(seen[r] for r in newest), 30, "the newest runs under way"
                )
                mark = launcher.kill(name)
                await launcher.line(rf"^{name} exited \(code -9, SIGKILL\); restarting in [\d.]+ s$", mark)
                await launcher.line(rf"^{name} started \(pid \d+\)$", mark)
                await eventually(lambda: asyncio.to_thread(ready, launcher.base_url), 60, f"{name} back")
            await check_invariants("make run: runner, gateway, nats-server SIGKILL", api, work, ws_sample=12)
            await asyncio.wait_for(asyncio.gather(*watchers), 60)
            for run_id, seqs in seen.items():
                n = len(await api.logs(run_id))
                assert seqs == list(range(1, n + 1)), f"run {run_id}: the live client saw {seqs}"
        finally:
            for watcher in watchers:
                watcher.cancel()
            await work.stop()
            await api.close()
        assert launcher.proc is not None and launcher.proc.poll() is None, "the launcher itself stays up"


def environ(pid: int) -> dict[str, str]:
    """The environment process `pid` was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


# The gateway's credentials: only the gateway may hold them.
GATEWAY_SECRETS = {
    "AGENTBUS_ADMIN_TOKEN": "admin-token-of-the-supervisor-test-0123",
    "JWT_KEY": "jwt-key-of-the-supervisor-test-0123456789",
    "JWT_ALGORITHMS": "HS256",
    "JWT_ISSUER": "https://idp.test",
    "JWT_AUDIENCE": "agentbus",
}


def test_ctrl_c_twice_leaves_nothing_behind(tmp_path: Path) -> None:
    with make_run(tmp_path / "var", **GATEWAY_SECRETS) as launcher:
        launcher.wait_line(r"^agentbus is ready$")
        launcher.wait_line(r"^Authentication is on: every request needs credentials \(the admin token")
        pids = launcher.all_pids()
        assert len(pids) == 4, launcher.output()
        # Each process has what it needs and no more: the gateway's secrets stay in the gateway.
        envs = {name: environ(pid) for name, pid in launcher.pids().items()}
        assert envs["gateway"]["AGENTBUS_ADMIN_TOKEN"] == GATEWAY_SECRETS["AGENTBUS_ADMIN_TOKEN"]
        assert envs["gateway"]["JWT_KEY"] == GATEWAY_SECRETS["JWT_KEY"]
        for name in ("runner", "metrics", "nats-server"):
            leaked = [k for k, v in envs[name].items() if k.startswith("JWT_") or "supervisor-test" in v]
            assert not leaked, f"{name} was given {leaked}"
            assert "DATABASE_URL" not in envs[name], name  # the gateway's database
        assert "METRICS_DATABASE_URL" not in envs["gateway"] and "METRICS_DATABASE_URL" in envs["metrics"]
        assert launcher.proc is not None
        launcher.proc.send_signal(signal.SIGINT)
        launcher.wait_line(r"^stopping\.\.\.$")
        launcher.proc.send_signal(signal.SIGINT)  # people press it twice
        assert launcher.proc.wait(30) == 0, launcher.output()
        launcher.wait_line(r"^stopping now: killing what is left$")
        assert not [pid for pid in pids if alive(pid)], launcher.output()
        for port in (launcher.http_port, launcher.nats_port):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"


def test_a_var_in_use_is_refused_even_by_leftovers(tmp_path: Path) -> None:
    var = tmp_path / "var"
    with make_run(var) as first:
        first.wait_line(r"^agentbus is ready$")
        second = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "run.py")],
            env={**MakeRun(var).env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode != 0
        assert "is in use by another `make run`" in second.stderr, second.stdout + second.stderr
        # The launcher dies without stopping anything (SIGKILL): its leftovers still hold ./var.
        assert first.proc is not None
        first.proc.kill()
        first.proc.wait(10)
        assert all(alive(pid) for pid in first.all_pids() - {first.proc.pid}), first.output()
        third = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "run.py")],
            env={**MakeRun(var).env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert third.returncode != 0 and "is in use" in third.stderr, third.stdout + third.stderr
        leftover = str(first.pids()["nats-server"])
        assert leftover in third.stderr, f"the refusal names the leftover nats-server: {third.stderr}"


def test_a_service_that_keeps_dying_is_retried_with_growing_pauses(tmp_path: Path) -> None:
    # Its /metrics port is taken: the metrics service exits with code 1 at once, every time, and
    # might start once the port is free again.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        with make_run(tmp_path / "var", METRICS_METRICS_PORT=port) as launcher:
            pauses: list[float] = []
            at = 0
            for _ in range(4):
                at, m = launcher.wait_line(
                    r"^metrics exited \(code 1\).*(?:restarting|trying again) in ([\d.]+) s$", at
                )
                pauses.append(float(m[1]))
                at += 1
            assert pauses == [0.5, 1.0, 2.0, 4.0], launcher.output()
            _, m = launcher.wait_line(
                r"^metrics exited \(code 1\) (\d+) times in a row within 10 s of starting"
            )
            assert int(m[1]) >= 3
            assert launcher.proc is not None and launcher.proc.poll() is None, "the launcher keeps going"
            assert alive(launcher.pids()["gateway"]) and alive(launcher.pids()["runner"])


def test_a_service_refused_by_its_settings_stops_everything(tmp_path: Path) -> None:
    # Starting it again would change nothing: the launcher stops everything and says why.
    with make_run(tmp_path / "var", METRICS_DB_POOL_SIZE="many") as launcher:
        assert launcher.proc is not None
        assert launcher.proc.wait(60) == EXIT_CONFIG, launcher.output()
        launcher.wait_line(r"^agentbus-metrics: invalid configuration: METRICS_DB_POOL_SIZE=many: must be ")
        launcher.wait_line(rf"^metrics exited \(code {EXIT_CONFIG}\): its settings are refused")
        launcher.wait_line(r"^stopping everything: metrics cannot start with these settings$")
        output = launcher.output()
        assert "restarting" not in output and "agentbus is ready" not in output, output
        pids = launcher.all_pids()
        assert {"nats-server", "metrics"} <= set(launcher.pids()), output
        assert not [pid for pid in pids if alive(pid)], output
        for port in (launcher.http_port, launcher.nats_port):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"


def test_settings_the_gateway_refuses_stop_make_run_before_anything_starts(tmp_path: Path) -> None:
    # Beyond loopback without authentication: refused by the gateway's own settings, which the
    # launcher reads before it starts anything.
    var = tmp_path / "var"
    with make_run(var, GATEWAY_HOST="0.0.0.0") as launcher:
        assert launcher.proc is not None
        assert launcher.proc.wait(30) == EXIT_CONFIG, launcher.output()
        launcher.wait_line(
            r"^make run: invalid configuration: GATEWAY_HOST=0\.0\.0\.0: must be a loopback address .*"
            r"set AGENTBUS_ADMIN_TOKEN .* or ALLOW_INSECURE=1"
        )
        assert not launcher.all_pids() and not var.exists(), launcher.output()

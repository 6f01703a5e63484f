"""Each benchmark: drive a running system with load processes, return the runs' raw figures.

Every function measures one thing once; `bench.__main__` repeats it and takes medians. The HTTP
load (`http_max`, `http_at_rate`) is bench.webload's and the API calls that set a case up are
bench.api's, both named here too; every request carries this run's admin key, or token (bench.auth).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench import auth
from bench.api import FAST_RUN, cancel_run, create_run, create_task, waiting_run
from bench.api import deep_cursor as deep_cursor
from bench.api import list_paths as list_paths
from bench.api import wait_run as wait_run
from bench.publish import inbox_of
from bench.services import ROOT, collect, cpu_seconds, free_port, rss_kb, service_pids, start_tool, tool
from bench.webload import http_at_rate as http_at_rate
from bench.webload import http_max as http_max
from tests.support.system import System


def _wait_line(proc: subprocess.Popen, expected: str, timeout: float = 120) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate()
            raise RuntimeError(f"{proc.args} ended before '{expected}':\n{err[-3000:]}")
        if line.strip() == expected:
            return
    raise TimeoutError(f"{proc.args}: no '{expected}' in {timeout}s")


# --- CPU ---------------------------------------------------------------------------------------------


def with_cpu(pid: int, work):  # type: ignore[no-untyped-def]
    """Run `work()` and add the CPU time the process `pid` used meanwhile."""
    before = cpu_seconds(pid)
    t0 = time.perf_counter()
    result = work()
    result["server_cpu_s"] = cpu_seconds(pid) - before
    result["wall_s"] = time.perf_counter() - t0
    return result


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def with_service_cpu(system: System, work, settle_s: float = 10.0):  # type: ignore[no-untyped-def]
    """Run `work()` and add the CPU seconds (user + sys) every service process used meanwhile, as
    `cpu_s_<name>` for nats-server, gateway, runner and metrics and `cpu_s_total`.

    Work a service does after `work()` returned (the metrics service draining its consumers, a
    checkpoint written in the background) belongs to it too: the count goes on until the services
    are quiet (under 5% of a core over 200 ms), at most `settle_s`. Idle services use ~0.
    """
    pids = service_pids(system)
    before = cpu_of(pids)
    result = work()
    last = sum(cpu_of(pids).values())
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = sum(cpu_of(pids).values())
        if now - last < 0.01:
            break
        last = now
    after = cpu_of(pids)
    for name in pids:
        result[f"cpu_s_{name}"] = after[name] - before[name]
    result["cpu_s_total"] = sum(after[n] - before[n] for n in pids)
    return result


# --- events ------------------------------------------------------------------------------------------


def event_latency(system: System, rate: float, duration: float, sse: bool = False, clients: int = 1) -> dict:
    """One (or more) subscribers of one run; a runner-like publisher at `rate` events/s."""
    run = waiting_run(system)
    # Both start after the events the run already has, so only the published ones are timed.
    path = f"/api/runs/{run['id']}/events?since={run['last_seq']}" if sse else f"/ws/runs/{run['id']}"
    args = [system.base_url, path, "--clients", str(clients), "--duration", str(duration + 3)]
    listener = start_tool("wsload", *args, *(["--sse"] if sse else []))
    _wait_line(listener, "ready")
    pub = tool(
        "publish",
        system.nats.url_as("runner"),  # type: ignore[attr-defined]
        "--task",
        run["task_id"],
        "--run",
        run["id"],
        "--first-seq",
        str(run["last_seq"] + 1),
        "--rate",
        str(rate),
        "--duration",
        str(duration),
    )
    result = collect(listener)
    result["published"] = pub["published"]
    result["publish_rate"] = pub["rate"]
    return result


def fanout(
    system: System, clients: int, stalled: int, rate: float, duration: float, path: str = "/ws/stream"
) -> dict:
    run = waiting_run(system)
    listener = start_tool(
        "wsload",
        system.base_url,
        path,
        "--clients",
        str(clients),
        "--stalled",
        str(stalled),
        "--duration",
        str(duration + 5),
    )
    _wait_line(listener, "ready", timeout=300)
    pid = system.gateways[0][0].proc.pid  # type: ignore[union-attr]
    rss_open = rss_kb(pid)
    cpu_before = cpu_seconds(pid)
    pub = tool(
        "publish",
        system.nats.url_as("runner"),  # type: ignore[attr-defined]
        "--task",
        run["task_id"],
        "--run",
        run["id"],
        "--first-seq",
        str(run["last_seq"] + 1),
        "--rate",
        str(rate),
        "--duration",
        str(duration),
    )
    result = collect(listener, timeout=600)
    result["published"] = pub["published"]
    result["publish_rate"] = pub["rate"]
    result["gateway_rss_kb"] = rss_open
    # CPU time the gateway spent per frame delivered: steadier than throughput on a shared machine.
    result["cpu_us_per_frame"] = (cpu_seconds(pid) - cpu_before) / max(1, result["frames"]) * 1e6
    return result


def ws_memory(system: System, clients: int) -> dict:
    """Gateway RSS with `clients` idle WebSockets open, against the same process before."""
    pid = system.gateways[0][0].proc.pid  # type: ignore[union-attr]
    before = rss_kb(pid)
    listener = start_tool(
        "wsload", system.base_url, "/ws/stream", "--clients", str(clients), "--duration", "3"
    )
    _wait_line(listener, "ready", timeout=300)
    time.sleep(1)
    during = rss_kb(pid)
    collect(listener)
    return {"before_kb": before, "during_kb": during, "per_ws_kb": (during - before) / clients}


# --- runs --------------------------------------------------------------------------------------------


def run_throughput(system: System, count: int, concurrency: int) -> dict:
    task = create_task(system, agent_config=FAST_RUN, require_approval=False)
    return tool(
        "runload",
        system.base_url,
        "--task",
        task["id"],
        "--count",
        str(count),
        "--concurrency",
        str(concurrency),
    )


def runner_event_latency(
    system: System, rate: float, steps: int, duration: float, step_delay_ms: float = 5
) -> dict:
    """Runs of the scripted agent (`steps` steps of `step_delay_ms`, no approval) created at `rate`
    per second, all watched on /ws/stream: each `progress` event's age on arrival (`progress_*`)."""
    config = {"steps": steps, "step_delay_ms": step_delay_ms}
    task = create_task(system, agent_config=config, require_approval=False)
    return tool(
        "runload", system.base_url, "--task", task["id"], "--rate", str(rate), "--duration", str(duration)
    )


def run_latency(system: System, rate: float, duration: float) -> dict:
    task = create_task(system, agent_config=FAST_RUN, require_approval=False)
    return tool(
        "runload", system.base_url, "--task", task["id"], "--rate", str(rate), "--duration", str(duration)
    )


async def _runner_active(nats_url: str) -> int:
    import nats

    from agentbus.contracts import Ping, encode, subjects
    from agentbus.contracts.messages import Pong

    nc = await nats.connect(nats_url, inbox_prefix=inbox_of(nats_url))
    try:
        import msgspec

        msg = await nc.request(subjects.RUN_PING, encode(Ping()), timeout=5)
        return msgspec.json.decode(msg.data, type=Pong).active_runs
    finally:
        await nc.close()


def runner_memory(system: System, in_flight: int) -> dict:
    """Runner RSS while it holds `in_flight` executing runs; they are cancelled afterwards."""
    pid = system.runners[0].proc.pid  # type: ignore[union-attr]
    before = rss_kb(pid)
    task = create_task(system, agent_config={"steps": 1, "step_delay_ms": 60_000}, require_approval=False)
    runs = [create_run(system, task["id"])["id"] for _ in range(in_flight)]
    deadline = time.monotonic() + 60
    active = 0
    while time.monotonic() < deadline:
        active = asyncio.run(_runner_active(system.nats.url_as("runner")))  # type: ignore[attr-defined]
        if active >= in_flight:
            break
        time.sleep(0.2)
    time.sleep(1)
    during = rss_kb(pid)
    for run_id in runs:
        cancel_run(system, run_id)
    return {"before_kb": before, "during_kb": during, "active": active}


def parked(system: System, count: int, run_count: int, repeats: int, duration: float) -> dict:
    """New runs with none parked, then with `count` runs parked awaiting approval on the one runner,
    and the drain when all of those are approved, in one go on one system (medians of `repeats`)."""
    import statistics
    import tempfile

    def plain() -> tuple[float, float]:
        throughput = run_throughput(system, run_count, 32)
        latency = run_latency(system, 100, duration)
        return throughput["runs_per_s"], latency["p50_ms"]

    before = [plain() for _ in range(repeats)]
    task = create_task(system, agent_config=FAST_RUN, require_approval=True, approval_timeout_s=86_400)
    with tempfile.TemporaryDirectory() as tmp:
        ids = Path(tmp) / "parked.txt"
        park = tool(
            "parkload",
            system.base_url,
            "--task",
            task["id"],
            "--count",
            str(count),
            "--out",
            str(ids),
            "park",
            timeout=1200,
        )
        rss = rss_kb(system.runners[0].proc.pid)  # type: ignore[union-attr]
        active = asyncio.run(_runner_active(system.nats.url_as("runner")))  # type: ignore[attr-defined]
        during = [plain() for _ in range(repeats)]
        drain = tool(
            "parkload", system.base_url, "--task", task["id"], "--ids", str(ids), "approve", timeout=1200
        )
    none_rps = statistics.median(r for r, _ in before)
    parked_rps = statistics.median(r for r, _ in during)
    none_p50 = statistics.median(p for _, p in before)
    parked_p50 = statistics.median(p for _, p in during)
    return {
        "parked": park["parked"],
        "park_per_s": park["park_per_s"],
        "runner_active_while_parked": active,
        "runner_rss_kb": rss,
        "none_runs_per_s": none_rps,
        "parked_runs_per_s": parked_rps,
        "throughput_ratio": parked_rps / none_rps,
        "none_p50_ms": none_p50,
        "parked_p50_ms": parked_p50,
        "p50_ratio": parked_p50 / none_p50,
        "drained": drain["completed"],
        "drain_runs_per_s": drain["runs_per_s"],
        "drain_ratio": drain["runs_per_s"] / none_rps,
    }


# --- start-up ----------------------------------------------------------------------------------------


def startup(timeout: float = 60, root: Path = ROOT) -> dict:
    """`make run` in a fresh data directory until /ready answers 200 (warm environment: installed).

    In `root`: this checkout, or a compared ref's worktree (bench.services.ref_checkout)."""
    import os
    import signal

    var = tempfile.mkdtemp(prefix="agentbus-bench-var-")
    port = free_port()
    env = {
        **os.environ,
        "AGENTBUS_VAR": var,
        "GATEWAY_PORT": str(port),
        "NATS_PORT": str(free_port()),
        "LOG_LEVEL": "WARNING",
        **auth.gateway_env(),
    }
    env.pop("DATABASE_URL", None)
    env.pop("METRICS_DATABASE_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["make", "-s", "run"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ready_s = None
    try:
        while time.perf_counter() - t0 < timeout and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    ready_s = time.perf_counter() - t0
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(var, ignore_errors=True)
    if ready_s is None:
        raise RuntimeError(f"make run did not answer /ready within {timeout}s (exit code {proc.returncode})")
    return {"ready_s": ready_s}


# --- ceilings ----------------------------------------------------------------------------------------


def nats_round_trip(url: str, duration: float, concurrency: int) -> dict:
    return tool(
        "baseline", "requester", "--url", url, "--duration", str(duration), "--concurrency", str(concurrency)
    )

"""Starting what the benchmarks measure: the real services (tests/support/system.py), PostgreSQL,
the baselines, and the load processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.servers import create_database, free_port, postgres_server, wait_port
from tests.support.system import System, start_system

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# The services log at WARNING under load: nothing on a hot path logs at INFO, but a benchmark should
# not measure a terminal. Everything else is the services' defaults.
SERVICE_ENV = {"LOG_LEVEL": "WARNING"}


@contextmanager
def postgres() -> Iterator[str]:
    """An admin URL of a PostgreSQL server (DATABASE_URL, testcontainers, or a throwaway cluster)."""
    with postgres_server() as url:
        yield url


@contextmanager
def agentbus(db: str, pg_admin: str | None = None, **env: str) -> Iterator[System]:
    """nats-server, metrics, one runner and one gateway as processes, on a fresh database."""
    url = None
    if db == "postgresql":
        assert pg_admin, "a PostgreSQL admin URL is needed"
        url = create_database(pg_admin, f"bench_{uuid.uuid4().hex[:10]}")
    system = start_system(database_url=url, **{**SERVICE_ENV, **env})
    try:
        yield system
    finally:
        system.stop()
        shutil.rmtree(system.root, ignore_errors=True)


def gateway_pid(system: System) -> int:
    proc = system.gateways[0][0].proc
    assert proc is not None
    return proc.pid


def runner_pid(system: System) -> int:
    proc = system.runners[0].proc
    assert proc is not None
    return proc.pid


def rss_kb(pid: int) -> int:
    """Resident set size of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@contextmanager
def bare_http() -> Iterator[str]:
    """The bare Litestar handler (bench.baseline http); yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([PY, "-m", "bench.baseline", "http", "--port", str(port)], cwd=ROOT)
    try:
        wait_port(port, timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def nats_responder(url: str) -> Iterator[None]:
    proc = subprocess.Popen(
        [PY, "-m", "bench.baseline", "responder", "--url", url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError("the NATS responder did not start")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def tool(module: str, *args: str, timeout: float = 300) -> dict:
    """Run a load process (`python -m bench.<module> ...`) and return the JSON it prints."""
    out = subprocess.run(
        [PY, "-m", f"bench.{module}", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench.{module} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_tool(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args} failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])

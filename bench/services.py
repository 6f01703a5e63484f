"""Starting what the benchmarks measure: the real services (as tests/support/system.py does, from a
code tree of choice: this checkout, or a git ref checked out beside it for `--compare`), PostgreSQL,
the baselines, and the load processes (always this checkout's harness)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench import auth
from tests.support.servers import (
    NatsServer,
    create_database,
    free_port,
    nats_server_binary,
    postgres_server,
    wait_port,
)
from tests.support.system import Service, System

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
UV = ROOT / ".tools" / "bin" / "uv"

# The services log at WARNING under load: nothing on a hot path logs at INFO, but a benchmark should
# not measure a terminal. Authentication is on, with the per-identity limits out of reach
# (bench.auth.gateway_env). Everything else is the services' defaults.
SERVICE_ENV = {"LOG_LEVEL": "WARNING"}


@contextmanager
def postgres() -> Iterator[str]:
    """An admin URL of a PostgreSQL server (DATABASE_URL, testcontainers, or a throwaway cluster)."""
    with postgres_server() as url:
        yield url


@dataclass(frozen=True)
class Code:
    """The code whose services are started: a tree, the python of its environment, its nats-server."""

    label: str
    root: Path
    python: str
    nats_server: str
    env_drop: tuple[str, ...] = ()  # variables not passed on to its services

    @property
    def secured(self) -> bool:
        """Its services connect as their own broker users (agentbus.common.broker), as shipped."""
        return (self.root / "libs/common/src/agentbus/common/broker.py").exists()


def current_code() -> Code:
    """This checkout, served by the harness's own environment (what `make bench` always measured)."""
    return Code("current", ROOT, PY, nats_server_binary())


@dataclass
class _Service(Service):
    cwd: Path | None = None

    def start(self) -> _Service:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd
        )
        return self


@dataclass
class _System(System):
    """tests.support.system.System with the services run by `code`'s python from `code`'s tree."""

    code: Code = field(default_factory=current_code)

    def _service(self, name: str, module: str, extra: dict[str, str] | None = None) -> Service:
        env = {**self.env, **self.nats.credentials(module.split(".")[1]), **(extra or {})}
        args = [self.code.python, "-m", module]
        return _Service(name, args, env, self.root / f"{name}.log", cwd=self.code.root).start()


class _Nats(NatsServer):
    def __init__(self, store_dir: str, binary: str, secured: bool) -> None:
        super().__init__(store_dir, secured=secured, binary=binary)

    def url_as(self, user: str) -> str:
        """The URL with `user`'s credentials in it, for the harness's own tools."""
        login = self.login(user)
        return f"nats://{user}:{login['password']}@127.0.0.1:{self.port}" if login else self.url


def _admin_key(system: System) -> None:
    """Make an admin API key on the system's gateway and measure with it (bench.auth); a gateway
    that has no keys (an older ref: 404 or 405) is measured with the admin token."""
    url = f"{system.base_url}/api/keys"
    headers = {"Authorization": f"Bearer {auth.token()}"}
    r = httpx.post(url, json={"name": "bench", "role": "admin"}, headers=headers, timeout=30)
    if r.status_code in (404, 405):
        return
    r.raise_for_status()
    auth.use_key(urlsplit(system.base_url).port or 80, r.json()["key"])


def start_system(code: Code, database_url: str | None = None, **env: str) -> System:
    """As tests.support.system.start_system (metrics, one runner, one gateway), from `code`."""
    root = Path(tempfile.mkdtemp(prefix="agentbus-bench-"))
    nats = _Nats(str(root / "nats"), code.nats_server, code.secured).start()
    base_env = {
        **os.environ,
        "NATS_URL": nats.url,
        "DATABASE_URL": database_url or f"sqlite+aiosqlite:///{root / 'gateway.db'}",
        "METRICS_DATABASE_URL": f"sqlite+aiosqlite:///{root / 'metrics.db'}",
        "GATEWAY_HOST": "127.0.0.1",
        "LOG_LEVEL": "INFO",
        **env,
    }
    for name in ("AGENTBUS_ADMIN_TOKEN", "AGENTBUS_API_TOKEN", *code.env_drop):
        base_env.pop(name, None)
    # This run's admin token under both names (this checkout's gateway and an older ref's check it
    # alike), and the write rate, burst and streams per identity far above what the benchmarks send.
    base_env.update(auth.gateway_env())
    system = _System(root, nats, base_env, code=code)
    try:
        system.add_metrics()
        system.add_runner()
        system.add_gateway()
        system.wait_ready()
        _admin_key(system)
    except BaseException:
        system.stop()
        raise
    return system


@contextmanager
def agentbus(db: str, pg_admin: str | None = None, code: Code | None = None, **env: str) -> Iterator[System]:
    """nats-server, metrics, one runner and one gateway as processes, on a fresh database.

    From `code` (default: this checkout).
    """
    url = None
    if db == "postgresql":
        assert pg_admin, "a PostgreSQL admin URL is needed"
        url = create_database(pg_admin, f"bench_{uuid.uuid4().hex[:10]}")
    system = start_system(code or current_code(), database_url=url, **{**SERVICE_ENV, **env})
    try:
        yield system
    finally:
        system.stop()
        shutil.rmtree(system.root, ignore_errors=True)


class RefError(RuntimeError):
    """REF cannot be compared: not a commit, its environment does not install, or it has no services."""


def _git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RefError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def _base_python() -> str:
    """The interpreter this environment was made from: REF's is made from the same one."""
    return getattr(sys, "_base_executable", None) or sys.executable


@contextmanager
def ref_checkout(ref: str) -> Iterator[Code]:
    """`ref` checked out into a temporary git worktree with its own environment (`uv sync --frozen`
    with this project's uv, into the worktree's .venv); removed afterwards, also on Ctrl-C or error."""
    sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    short = _git("rev-parse", "--short", sha)
    if not UV.exists():
        raise RefError(f"{UV} is missing: run `make install` first")
    tmp = Path(tempfile.mkdtemp(prefix="agentbus-bench-ref-"))
    tree = tmp / "tree"
    added = False
    try:
        print(f"compare: checking out {ref} ({short}) into {tree}", flush=True)
        _git("worktree", "add", "--detach", str(tree), sha)
        added = True
        venv = tree / ".venv"
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env.update(UV_PROJECT_ENVIRONMENT=str(venv), UV_PYTHON_DOWNLOADS="never")
        t0 = time.perf_counter()
        out = subprocess.run(
            [str(UV), "sync", "--frozen", "--python", _base_python()],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RefError(f"uv sync --frozen in {ref}'s tree failed:\n{out.stderr[-3000:]}")
        # `make run` there (the start-up benchmark) finds the same uv and an installed environment.
        (tree / ".tools").symlink_to(ROOT / ".tools")
        (venv / ".synced").touch()
        python = str(venv / "bin" / "python")
        where = subprocess.run(
            [
                python,
                "-c",
                "import agentbus.gateway as g, agentbus.runner as r, agentbus.metrics as m;"
                "print(g.__file__); print(r.__file__); print(m.__file__)",
            ],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        )
        files = where.stdout.split()
        if where.returncode != 0 or len(files) != 3 or not all(Path(f).is_relative_to(tree) for f in files):
            raise RefError(f"{ref}'s services do not import from its tree:\n{where.stdout}{where.stderr}")
        nats = venv / "bin" / "nats-server"
        print(f"compare: {ref} installed in {time.perf_counter() - t0:.1f}s; its services run from {tree}")
        yield Code(
            f"{ref} ({short})",
            tree,
            python,
            str(nats) if nats.exists() else nats_server_binary(),
            env_drop=("PYTHONPATH", "VIRTUAL_ENV"),
        )
    finally:
        # A second Ctrl-C must not leave the worktree half removed.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if added:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True
                )
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
            print(f"compare: removed the worktree of {ref}", flush=True)
        finally:
            signal.signal(signal.SIGINT, previous)


def service_pids(system: System) -> dict[str, int]:
    """The processes of one system, by the names the CPU rows use."""
    procs = {
        "nats-server": system.nats.proc,
        "gateway": system.gateways[0][0].proc,
        "runner": system.runners[0].proc,
        "metrics": system.metrics[0].proc,
    }
    pids = {}
    for name, proc in procs.items():
        assert proc is not None, name
        pids[name] = proc.pid
    return pids


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
        [PY, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        env=auth.tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench.{module} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_tool(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        env=auth.tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args} failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])

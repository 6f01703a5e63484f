"""Every service connects to a broker that requires TLS (NATS_TLS_CA), as its own user, and a run
goes through; a client that does not trust the broker's certificate authority is refused."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from tests.support.client import Api
from tests.support.servers import NatsServer
from tests.support.system import System, start_system

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d: Path) -> None:
    """A throwaway CA, and a certificate for 127.0.0.1 signed by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "1", "-subj", "/CN=agentbus test CA", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)  # fmt: skip
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "1", "-extfile", "ext", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def tls_system() -> Iterator[tuple[System, Path]]:
    d = Path(tempfile.mkdtemp(prefix="agentbus-tls-"))
    make_certificates(d)
    server = NatsServer(
        str(d / "nats"),
        secured=True,
        extra=["--tls", "--tlscert", str(d / "server.pem"), "--tlskey", str(d / "server.key")],
    ).start()
    system = start_system(
        nats=server, NATS_URL=f"tls://127.0.0.1:{server.port}", NATS_TLS_CA=str(d / "ca.pem")
    )
    try:
        yield system, d
    finally:
        system.stop()
        shutil.rmtree(d, ignore_errors=True)


async def test_a_run_over_a_broker_that_requires_tls(tls_system: tuple[System, Path]) -> None:
    system, _ = tls_system
    api = Api(system.base_url, system.ws_url)
    try:
        task = await api.task(require_approval=False, agent_config={"steps": 2, "step_delay_ms": 0})
        run = await api.run(task["id"])
        assert (await api.wait_status(run["id"], "completed"))["status"] == "completed"
    finally:
        await api.close()


async def test_a_client_that_does_not_trust_the_broker_is_refused(tls_system: tuple[System, Path]) -> None:
    system, d = tls_system
    url = f"tls://127.0.0.1:{system.nats.port}"
    # nats-py wraps the TLS error in types of its own, which differ by version.
    with pytest.raises(Exception) as caught:
        await nats.connect(
            url, tls=ssl.create_default_context(), allow_reconnect=False, connect_timeout=3,
            **system.nats.login("operator"),
        )  # fmt: skip
    assert "certificate" in repr(caught.value).lower() or "ssl" in repr(caught.value).lower()
    # With the CA it is the same user that gets in.
    nc = await nats.connect(
        url, tls=ssl.create_default_context(cafile=str(d / "ca.pem")), allow_reconnect=False,
        **system.nats.login("operator"),
    )  # fmt: skip
    assert nc.is_connected
    await nc.close()

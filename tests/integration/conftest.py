"""Fixtures of the gateway's integration tests: the app on a real NATS and a real database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from litestar.testing import AsyncTestClient

from agentbus.gateway.app import create_app
from agentbus.gateway.settings import Settings
from tests.support.fake_runner import FakeRunnerInfo
from tests.support.servers import NatsServer, nats_server

# The gateway serves loopback names only (a Host check against DNS rebinding).
LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def own_nats() -> Iterator[NatsServer]:
    # Its own broker: nothing else consumes run.start here, so the queued commands can be inspected.
    with nats_server() as server:
        yield server


@pytest.fixture(scope="module")
def runner_info(own_nats: NatsServer) -> Iterator[FakeRunnerInfo]:
    """Answers agent discovery as a runner serving `scripted` would."""
    fake = FakeRunnerInfo(own_nats.url).start()
    yield fake
    fake.stop()


@pytest.fixture
async def client(
    own_nats: NatsServer, database_url: str, runner_info: FakeRunnerInfo
) -> AsyncIterator[AsyncTestClient]:
    settings = Settings(
        nats_url=own_nats.url, database_url=database_url, max_body_bytes=64 * 1024, request_timeout_s=0.5
    )
    async with AsyncTestClient(app=create_app(settings), base_url=LOCAL) as c:
        yield c

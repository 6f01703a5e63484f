from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.client import Api
from tests.support.system import System, start_system


@pytest.fixture(scope="session")
def system() -> Iterator[System]:
    # Short heartbeats so the heartbeat test need not wait 10 s; everything else is the default.
    sys_ = start_system(WS_HEARTBEAT_S="0.5")
    try:
        yield sys_
    finally:
        sys_.stop()


# The admin token of `secured`, the system with authentication on, the shared secret its JWTs are
# signed with (HS256), and the issuer and audience they must name.
ADMIN = "e2e-admin-token-0123456789abcdef"
JWT_SECRET = "e2e-jwt-shared-secret-0123456789abcdef"
JWT_ISSUER = "https://idp.e2e.test"
JWT_AUDIENCE = "agentbus-e2e"
# Its webhook deliveries: attempts 0.2 s, 0.4 s, 0.8 s, then 1 s apart; failed after the 6th.
WEBHOOK_SETTINGS = {
    "WEBHOOK_BACKOFF_S": "0.2",
    "WEBHOOK_BACKOFF_MAX_S": "1",
    "WEBHOOK_MAX_ATTEMPTS": "6",
    "WEBHOOK_TIMEOUT_S": "2",
    "WEBHOOK_POLL_S": "0.2",
}


@pytest.fixture(scope="session")
def secured() -> Iterator[System]:
    """A second system, with authentication on (the admin token, API keys, and JWTs signed with
    `JWT_SECRET`); writes are not throttled (schemathesis sends many); webhook deliveries are retried
    within seconds (tests/e2e/test_webhooks.py)."""
    sys_ = start_system(
        AGENTBUS_ADMIN_TOKEN=ADMIN,
        JWT_KEY=JWT_SECRET,
        JWT_ALGORITHMS="HS256",
        JWT_ISSUER=JWT_ISSUER,
        JWT_AUDIENCE=JWT_AUDIENCE,
        GATEWAY_WRITE_RATE="100000",
        GATEWAY_WRITE_BURST="100000",
        WS_HEARTBEAT_S="0.5",
        **WEBHOOK_SETTINGS,
    )
    try:
        yield sys_
    finally:
        sys_.stop()


@pytest.fixture
async def admin_api(secured: System) -> AsyncIterator[Api]:
    client = Api(secured.base_url, secured.ws_url, token=ADMIN)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def api(system: System) -> AsyncIterator[Api]:
    client = Api(system.base_url, system.ws_url)
    try:
        yield client
    finally:
        await client.close()

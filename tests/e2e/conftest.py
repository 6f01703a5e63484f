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


@pytest.fixture
async def api(system: System) -> AsyncIterator[Api]:
    client = Api(system.base_url, system.ws_url)
    try:
        yield client
    finally:
        await client.close()

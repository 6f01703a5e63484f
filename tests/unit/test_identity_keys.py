"""API keys as the authenticator checks them: a busy key's row is read once when it goes stale,
however many requests use it at that moment, and a revocation read then is obeyed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from agentbus.gateway.identity import KEY_CACHE_S, Authenticator, Denied, new_key
from agentbus.gateway.settings import Settings

KEY_ID = "0123456789abcdef0123456789abcdef"


class Keys:
    """The stored row of one key, read as the store reads it, counting the reads."""

    def __init__(self) -> None:
        self.key, salt, digest = new_key(KEY_ID)
        self.row = SimpleNamespace(
            name="ci", role="operator", salt=salt, hash=digest, expires_at=None, revoked_at=None
        )
        self.reads = 0

    async def lookup(self, key_id: str) -> Any:
        self.reads += 1
        await asyncio.sleep(0.01)  # a read takes a while: requests arriving meanwhile share it
        return self.row if key_id == KEY_ID else None


async def test_a_stale_row_is_read_once_for_every_request_waiting_on_it() -> None:
    keys = Keys()
    auth = Authenticator(Settings(admin_token="admin-token-0123456789abcdef"), keys.lookup)
    found = await asyncio.gather(*(auth.identify(keys.key) for _ in range(50)))
    assert {(i.id, i.role) for i in found} == {(KEY_ID, "operator")}
    assert keys.reads == 1

    keys.row.revoked_at = datetime.now(UTC)
    deadline = asyncio.get_running_loop().time() + 5 * KEY_CACHE_S
    while asyncio.get_running_loop().time() < deadline:
        outcomes = await asyncio.gather(*(auth.identify(keys.key) for _ in range(20)), return_exceptions=True)
        if all(isinstance(o, Denied) for o in outcomes):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("a revoked key was still accepted after five cache lifetimes")
    assert {str(o) for o in outcomes} == {"this key was revoked"}
    assert keys.reads == 2  # the stale row, read once more for the twenty at once

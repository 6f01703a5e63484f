"""Open streams keep proving who they are: a credential revoked or expired ends its streams too.

A request's credential is checked once, when it arrives; a stream lives on for hours. So every open
stream (WebSocket or SSE) holds its credential here while it is open, and one task per gateway
process checks each credential held, every `RECHECK_S`, with the same `Authenticator.identify`
the requests go through. One that no longer proves an identity (a key revoked, a key or a JWT
expired) ends every stream holding it: the hub closes a WebSocket with 4401 and the reason, and
ends an SSE stream (`Subscription.revoke`).

The cost is per credential, not per stream: a credential held by a thousand streams is checked
once a round, and a key's row is read at most once per `KEY_CACHE_S` (identity.py). Since that
cache and this round are both half a second, a key revoked on any gateway copy ends its streams
everywhere within about a second, as it stops working for requests. A check that fails for another
reason (the database away) ends nothing: the next round checks again.

With authentication off there is nothing to prove and nothing is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from agentbus.gateway.identity import KEY_CACHE_S, Authenticator, Denied

log = logging.getLogger(__name__)

RECHECK_S = KEY_CACHE_S
# What a stream holding a credential is told when it no longer proves an identity: why.
Lost = Callable[[str], None]


class CredentialWatch:
    def __init__(self, authenticator: Authenticator, recheck_s: float = RECHECK_S) -> None:
        self.authenticator = authenticator
        self.recheck_s = recheck_s
        self._held: dict[str, set[Lost]] = {}  # credential -> the streams holding it
        self._task: asyncio.Task[None] | None = None

    def hold(self, credential: str | None, lost: Lost) -> None:
        """Until `release`, `lost(reason)` is called when `credential` stops proving an identity: in
        each round that finds it so, so `lost` must be idempotent (`Subscription.revoke` is). No
        credential (authentication off) holds nothing."""
        if credential is None or not self.authenticator.on:
            return
        self._held.setdefault(credential, set()).add(lost)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._rounds())

    def release(self, credential: str | None, lost: Lost) -> None:
        if credential is None or (holders := self._held.get(credential)) is None:
            return
        holders.discard(lost)
        if not holders:
            del self._held[credential]

    def held(self) -> int:
        """How many distinct credentials open streams hold now."""
        return len(self._held)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _rounds(self) -> None:
        """Check every held credential each `recheck_s`; end when none is held."""
        while self._held:
            await asyncio.sleep(self.recheck_s)
            await self.check()

    async def check(self) -> None:
        """One round: each credential held is checked once, whatever the number of its streams."""
        for credential in list(self._held):
            try:
                await self.authenticator.identify(credential)
            except Denied as exc:
                for lost in list(self._held.get(credential, ())):
                    lost(str(exc))
            except Exception as exc:  # cannot tell now (the database away): ask again next round
                log.warning("could not recheck a stream's credential: %s", type(exc).__name__)

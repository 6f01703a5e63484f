"""PostgreSQL connections held open for the hot paths (primary-key reads, the event batch), used
through asyncpg's own API: no pool checkout and return, no pre-ping, no reset per use.

Each path has an engine of its own (its connections made by SQLAlchemy: its connect arguments, its
JSON codecs), whose few connections this holds. A connection is made when first needed and reused
last in, first out, so a light load keeps reusing one. A use that fails with an error the caller
says may have broken the connection drops it; its slot makes a new one next time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


def always(_exc: BaseException) -> bool:
    return True


class HeldConnections:
    def __init__(self, engine: AsyncEngine, size: int) -> None:
        self.engine = engine
        self.size = size
        # (SQLAlchemy connection, asyncpg connection), or None for a slot yet to connect.
        self._slots: asyncio.LifoQueue[tuple[AsyncConnection, Any] | None] | None = None

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """The rows of one query (a statement asyncpg prepares and caches); any error drops the
        connection. The primary-key reads' path: no context manager around it."""
        held = await self._take()
        try:
            found = await held[1].fetch(sql, *args)
        except BaseException:
            await self._lose(held)
            raise
        self._give(held)
        return found

    @contextlib.asynccontextmanager
    async def connection(self, broken: Callable[[BaseException], bool] = always) -> AsyncIterator[Any]:
        """An asyncpg connection for the block; dropped when the block raises what `broken` says
        may have broken it (by default anything)."""
        held = await self._take()
        try:
            yield held[1]
        except BaseException as exc:
            if broken(exc):
                await self._lose(held)
            else:
                self._give(held)
            raise
        self._give(held)

    async def _take(self) -> tuple[AsyncConnection, Any]:
        if self._slots is None:
            self._slots = asyncio.LifoQueue()
            for _ in range(self.size):
                self._slots.put_nowait(None)
        held = await self._slots.get()
        if held is not None:
            return held
        conn = None
        try:
            conn = await self.engine.connect()
            return conn, (await conn.get_raw_connection()).driver_connection
        except BaseException:
            self._give(None)
            if conn is not None:
                await _drop(conn)
            raise

    def _give(self, held: tuple[AsyncConnection, Any] | None) -> None:
        assert self._slots is not None
        self._slots.put_nowait(held)

    async def _lose(self, held: tuple[AsyncConnection, Any]) -> None:
        self._give(None)  # first: the slot is never lost, even if the drop is cancelled
        await _drop(held[0])

    async def close(self) -> None:
        if self._slots is not None:
            while not self._slots.empty():
                held = self._slots.get_nowait()
                if held is not None:
                    with contextlib.suppress(Exception):
                        await held[0].close()
            self._slots = None
        await self.engine.dispose()


async def _drop(conn: AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()

"""Each measurement on PostgreSQL starts on a quiet database: what the ones before it left to do is
done first, not during it.

A case writes thousands of rows (POST at full speed makes tens of thousands of tasks; the run cases
update every run a dozen times). PostgreSQL pays for that later: autovacuum visits the tables once
their dead rows pass its thresholds (it looks every minute), and a checkpoint writes the dirty pages
(every few minutes, or when enough WAL was written). Left alone, that work lands in whichever
measurement runs next, on the same 2 cores: a figure would depend on the order of the cases (the
real-runner latency read 1.0-1.4 ms alone and 1.5-2.1 ms after the cases before it). So before each
repeat the harness runs `VACUUM (ANALYZE)` on the system's database and a `CHECKPOINT`: the debt of
the earlier work is paid, and what the measured load itself causes still lands in its own figure.
SQLite checkpoints its WAL as it goes; nothing is done there.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit


async def _settle(database_url: str) -> None:
    import asyncpg

    parts = urlsplit(database_url)
    conn = await asyncpg.connect(urlunsplit(("postgresql", *parts[1:])))
    try:
        await conn.execute("VACUUM (ANALYZE)")
        # A superuser's right, as on the harness's own cluster and a testcontainers one.
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def settle(database_url: str | None) -> None:
    """Pay a PostgreSQL database's maintenance debt now (nothing on SQLite)."""
    if database_url and database_url.startswith("postgresql"):
        asyncio.run(_settle(database_url))

"""Fill a gateway database with many tasks and runs, straight into its tables (not through the API),
for the lists benchmark: a million of each is minutes through the API and seconds here.

Rows are older than anything the benchmark creates through the API. Runs belong to `tasks_with_runs`
of the tasks in turn; nine in ten are `completed`, the rest `failed`. The row-count triggers
(migration 0003) keep the pages' totals as they do for every other write.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from urllib.parse import urlsplit, urlunsplit

SQLITE_TASKS = """
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n)
INSERT INTO tasks (id, name, agent, require_approval, approval_timeout_s, timeout_s, max_rounds,
    max_revision_rounds, status, total_runs, successful_runs, failed_runs, next_run_number,
    created_at, updated_at)
SELECT printf('seed%07d', x), 'seeded ' || x, 'scripted', 0, 300, 3600, 5, 2,
    CASE WHEN x % 10 = 0 THEN 'failed' ELSE 'completed' END, 0, 0, 0, 0,
    strftime('%Y-%m-%d %H:%M:%S', '2025-01-01', '+' || x || ' seconds') || '.000000',
    strftime('%Y-%m-%d %H:%M:%S', '2025-01-01', '+' || x || ' seconds') || '.000000'
FROM c
"""
SQLITE_RUNS = """
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n)
INSERT INTO runs (id, task_id, run_number, status, agent, require_approval, max_revision_rounds,
    progress, last_seq, created_at, updated_at)
SELECT printf('seedrun%07d', x), printf('seed%07d', (x - 1) % :spread + 1), x,
    CASE WHEN x % 10 = 0 THEN 'failed' ELSE 'completed' END, 'scripted', 0, 2, 100.0, 0,
    strftime('%Y-%m-%d %H:%M:%S', '2025-06-01', '+' || x || ' seconds') || '.000000',
    strftime('%Y-%m-%d %H:%M:%S', '2025-06-01', '+' || x || ' seconds') || '.000000'
FROM c
"""
PG_TASKS = """
INSERT INTO tasks (id, name, agent, require_approval, approval_timeout_s, timeout_s, max_rounds,
    max_revision_rounds, status, total_runs, successful_runs, failed_runs, next_run_number,
    created_at, updated_at)
SELECT 'seed' || lpad(x::text, 7, '0'), 'seeded ' || x, 'scripted', false, 300, 3600, 5, 2,
    CASE WHEN x % 10 = 0 THEN 'failed' ELSE 'completed' END, 0, 0, 0, 0,
    timestamptz '2025-01-01 00:00:00+00' + x * interval '1 second',
    timestamptz '2025-01-01 00:00:00+00' + x * interval '1 second'
FROM generate_series(1, $1::int) AS x
"""
PG_RUNS = """
INSERT INTO runs (id, task_id, run_number, status, agent, require_approval, max_revision_rounds,
    progress, last_seq, created_at, updated_at)
SELECT 'seedrun' || lpad(x::text, 7, '0'), 'seed' || lpad(((x - 1) % $2::int + 1)::text, 7, '0'), x,
    CASE WHEN x % 10 = 0 THEN 'failed' ELSE 'completed' END, 'scripted', false, 2, 100.0, 0,
    timestamptz '2025-06-01 00:00:00+00' + x * interval '1 second',
    timestamptz '2025-06-01 00:00:00+00' + x * interval '1 second'
FROM generate_series(1, $1::int) AS x
"""


def seed(database_url: str, tasks: int, runs: int, tasks_with_runs: int = 1000) -> float:
    """Insert the rows (on PostgreSQL: until a running gateway has folded their count deltas); returns
    the seconds it took."""
    t0 = time.perf_counter()
    spread = min(tasks, tasks_with_runs)
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        conn = sqlite3.connect(path, timeout=60)
        try:
            with conn:
                conn.execute(SQLITE_TASKS, {"n": tasks})
                conn.execute(SQLITE_RUNS, {"n": runs, "spread": spread})
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("ANALYZE")
        finally:
            conn.close()
    else:
        asyncio.run(_seed_pg(database_url, tasks, runs, spread))
    return time.perf_counter() - t0


async def _seed_pg(database_url: str, tasks: int, runs: int, spread: int) -> None:
    import asyncpg

    parts = urlsplit(database_url)
    dsn = urlunsplit(("postgresql", *parts[1:]))
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(PG_TASKS, tasks)
            await conn.execute(PG_RUNS, runs, spread)
        await conn.execute("VACUUM ANALYZE tasks")
        await conn.execute("VACUUM ANALYZE runs")
        # The bulk load appended a count delta per row and per count (migration 0003); the running
        # gateway folds them into the counts. Measure once that is done: a page's total reads the
        # deltas not folded yet, and the first fold of millions takes a while under load.
        deadline = time.monotonic() + 600
        while await conn.fetchval("SELECT EXISTS (SELECT 1 FROM row_count_deltas)"):
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway did not fold the seeded rows' count deltas in 600 s")
            await asyncio.sleep(0.5)
        await conn.execute("VACUUM ANALYZE row_count_deltas")
        # The bulk load's dirty pages written now (a superuser's right, as on the harness's own
        # cluster), not by a checkpoint spread over the measurement that follows.
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()

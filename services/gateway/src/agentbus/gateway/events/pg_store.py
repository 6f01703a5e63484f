"""Event batches on PostgreSQL straight over asyncpg: the event path's one hot transaction.

Through SQLAlchemy a batch took about 2 ms on loopback, of which the database's own work was a
few round trips of ~0.1 ms each; the rest was statement execution overhead, a pool pre-ping and a
reset on return. At 500 events/s that left the ingest busy most of the time, so each event also
waited for the batch in front of it. Here the same transaction is the same statements (the rows
come from, and the effects are computed by, `agentbus.gateway.events.ingest`) sent as plain
prepared SQL on a dedicated connection: BEGIN, the runs locked FOR UPDATE, one INSERT ... SELECT
FROM unnest(...) RETURNING that tells new events from redeliveries, pipelined executemany updates,
COMMIT.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from agentbus.gateway.events.ingest import RUN_COLUMNS, Batch, Effects, new_candidates

_JSON_COLUMNS = frozenset({"plan", "results", "approval"})

SELECT_RUNS = (
    f"SELECT id, task_id, {', '.join(RUN_COLUMNS)} FROM runs "
    "WHERE id = ANY($1::varchar[]) ORDER BY id FOR UPDATE"
)
INSERT_EVENTS = (
    'INSERT INTO run_events (run_id, task_id, seq, event_type, "timestamp", payload) '
    "SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::int[], $4::varchar[], "
    "$5::timestamptz[], $6::text[]) "
    "ON CONFLICT (run_id, seq) DO NOTHING RETURNING run_id, seq"
)
UPDATE_RUN = (
    "UPDATE runs SET " + ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(RUN_COLUMNS)) + " WHERE id = $1"
)
UPDATE_TASK_STATUS = "UPDATE tasks SET status = $3, updated_at = $4 WHERE id = $1 AND latest_run_id = $2"
UPDATE_TASK_COUNTERS = (
    "UPDATE tasks SET total_runs = total_runs + 1, successful_runs = successful_runs + $2, "
    "failed_runs = failed_runs + $3, last_run_duration = $4, last_error = $5, updated_at = $6 WHERE id = $1"
)
UPSERT_ARTIFACTS = (
    "INSERT INTO artifacts (run_id, task_id, name, size, content_type, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id, name) DO UPDATE SET "
    "size = EXCLUDED.size, content_type = EXCLUDED.content_type, created_at = EXCLUDED.created_at"
)


def _json(value: Any) -> str | None:
    # The connection's jsonb codec (SQLAlchemy's, see its asyncpg dialect) takes JSON text.
    return None if value is None else msgspec.json.encode(value).decode()


class PgEventStore:
    def __init__(self, url: URL) -> None:
        # Its own small pool: no pre-ping and no reset on return (each batch is one explicit
        # transaction). A connection that broke is dropped; the ingest retries the batch.
        self.engine = create_async_engine(
            url, pool_size=1, max_overflow=2, pool_pre_ping=False, pool_reset_on_return=None
        )

    async def close(self) -> None:
        await self.engine.dispose()

    async def store(self, batch: Batch) -> Batch:
        async with self.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            try:
                async with raw.transaction():
                    return await self._store(raw, batch)
            except Exception as exc:
                if not _is_server_error(exc):  # the connection itself failed: never reuse it
                    await _invalidate(conn)
                raise

    @staticmethod
    async def _store(db: Any, batch: Batch) -> Batch:
        ids = sorted({e.run_id for e, _ in batch})
        rows = {r["id"]: dict(r) for r in await db.fetch(SELECT_RUNS, ids)}
        fresh = new_candidates(rows, batch)
        if not fresh:
            return []
        columns: list[list[Any]] = [[], [], [], [], [], []]
        for e, raw in fresh.values():
            for column, value in zip(
                columns,
                (e.run_id, e.task_id, e.seq, e.__struct_config__.tag, e.timestamp, raw.decode()),
                strict=True,
            ):
                column.append(value)
        inserted = {(r["run_id"], r["seq"]) for r in await db.fetch(INSERT_EVENTS, *columns)}
        effects = Effects.of(rows, fresh, inserted)
        if effects.artifacts:
            await db.executemany(
                UPSERT_ARTIFACTS,
                [
                    (a["run_id"], a["task_id"], a["name"], a["size"], a["content_type"], a["created_at"])
                    for a in effects.artifacts
                ],
            )
        if effects.dirty:
            await db.executemany(
                UPDATE_RUN,
                [
                    (r["id"], *(_json(r[c]) if c in _JSON_COLUMNS else r[c] for c in RUN_COLUMNS))
                    for r in effects.dirty.values()
                ],
            )
            await db.executemany(
                UPDATE_TASK_STATUS,
                [(t["b_task"], t["b_run"], t["b_status"], t["b_updated"]) for t in effects.task_statuses()],
            )
        if effects.ended:
            await db.executemany(
                UPDATE_TASK_COUNTERS,
                [
                    (
                        c["b_task"],
                        c["b_succeeded"],
                        c["b_failed"],
                        c["b_duration"],
                        c["b_error"],
                        c["b_updated"],
                    )
                    for c in effects.task_counters()
                ],
            )
        return effects.stored


def _is_server_error(exc: BaseException) -> bool:
    """An error the server answered with (a constraint, bad data): the connection is still good."""
    import asyncpg

    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, asyncpg.PostgresConnectionError)


async def _invalidate(conn: AsyncConnection) -> None:
    try:
        await conn.invalidate()
    except Exception:
        pass

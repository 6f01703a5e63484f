"""The event path's one hot transaction: store a batch of run events and their effects.

Both forms run the same steps and write the same `Effects` (computed once, in `effects.py`):
lock the batch's runs, insert the events with ON CONFLICT DO NOTHING RETURNING (which tells new
events from redeliveries), then update the runs, their tasks' statuses and, for runs that ended,
the tasks' counters, upsert the artifacts index, and keep the approvals inbox (settle pending
requests, then add new ones, ON CONFLICT DO NOTHING; `approval_effects.py`), and make the webhook
deliveries of the new events (`webhooks.py`: one read of the small `webhooks` table, an insert only
when a webhook asks for one of them). A batch without approval or terminal events runs no inbox
statement.

- SQLite (`SqliteEventBatch`): one unit of the process's writer thread (one hand-off per batch,
  on the connection that holds the write lock; the transaction began IMMEDIATE, which is the
  lock). The statements every batch runs go straight to the driver with SQLAlchemy's type
  processors (`sqlite_direct.py`), the rarer ones through Core. Through aiosqlite every
  statement, cursor and commit was a round trip to its thread, and those were most of the event
  latency; then Core's execution of the statements was most of what was left.
- PostgreSQL (`PgEventBatch`): the same statements as prepared SQL straight over asyncpg on a
  few held connections of its own (`held.py`; each batch is one explicit transaction): BEGIN, one
  statement that locks the runs FOR UPDATE, inserts the events (INSERT ... SELECT FROM
  unnest(...)) and reads the webhooks, each run's and its task's update in one statement
  (pipelined executemany), COMMIT: four round trips for a batch of progress events. Through
  SQLAlchemy's execution layer the batch cost several times the database's own work.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import bindparam, or_, select, tuple_
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import create_async_engine

from agentbus.gateway.store.approval_effects import ApprovalRow
from agentbus.gateway.store.effects import (
    RUN_COLUMNS,
    Batch,
    Effects,
    Stored,
    conflicts_of,
    duplicates,
    event_row,
    new_candidates,
    once_each,
)
from agentbus.gateway.store.held import HeldConnections
from agentbus.gateway.store.sqlite_direct import SqliteDirect
from agentbus.gateway.store.tables import approvals, artifacts, run_events, tasks
from agentbus.gateway.store.webhooks import SUBSCRIBERS_JSON, pg_deliveries, sqlite_deliveries
from agentbus.gateway.store.writer import Writer


def _sqlite_upsert_artifacts() -> Any:
    # An agent may write an artifact again (a step re-run after its runner was lost): the index
    # follows the bytes it replaced.
    upsert = sqlite_insert(artifacts)
    return upsert.on_conflict_do_update(
        index_elements=["run_id", "name"],
        set_={c: upsert.excluded[c] for c in ("size", "content_type", "created_at")},
    )


class SqliteEventBatch:
    # The statements every batch runs are `sqlite_direct.py`'s; these, for the rarer steps, are
    # built once (their construction showed in the profile).
    _UPSERT_ARTIFACTS = _sqlite_upsert_artifacts()
    _STORED = select(run_events.c.run_id, run_events.c.seq, run_events.c.payload).where(
        tuple_(run_events.c.run_id, run_events.c.seq).in_(bindparam("keys", expanding=True))
    )
    _DELETE_EVENT = run_events.delete().where(
        run_events.c.run_id == bindparam("b_run_id"), run_events.c.seq == bindparam("b_seq")
    )
    # Bound as b_<field> of the typed values: SQLAlchemy reserves column names for SET values.
    _UPDATE_TASK_COUNTERS = (
        tasks.update()
        .where(tasks.c.id == bindparam("b_task_id"))
        .values(
            total_runs=tasks.c.total_runs + 1,
            successful_runs=tasks.c.successful_runs + bindparam("b_succeeded"),
            failed_runs=tasks.c.failed_runs + bindparam("b_failed"),
            last_run_duration=bindparam("b_last_run_duration"),
            last_error=bindparam("b_last_error"),
            updated_at=bindparam("b_updated_at"),
        )
    )

    _SETTLE_APPROVALS = (
        approvals.update()
        .where(
            approvals.c.run_id == bindparam("b_run_id"),
            approvals.c.status == "pending",
            or_(
                bindparam("b_plan_version").is_(None), approvals.c.plan_version == bindparam("b_plan_version")
            ),
        )
        .values(
            status=bindparam("b_status"),
            decided_at=bindparam("b_decided_at"),
            feedback=bindparam("b_feedback"),
        )
    )
    _INSERT_APPROVALS = sqlite_insert(approvals).on_conflict_do_nothing(index_elements=["id"])

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.direct: SqliteDirect | None = None

    async def store(self, batch: Batch, replace: bool = False) -> Stored:
        return await self.writer(lambda conn: self._store(conn, batch, replace))

    def _store(self, conn: Connection, batch: Batch, replace: bool) -> Stored:
        # Every batch's statements (read the runs, insert the events, update the runs and their
        # tasks' statuses) go straight to the driver (`sqlite_direct.py`); the rarer ones through Core.
        direct = self.direct = self.direct or SqliteDirect(conn.dialect)
        rows = direct.runs(conn, sorted({e.run_id for e, _ in batch}))
        fresh = new_candidates(rows, batch)
        if not fresh:
            return Stored([], [])
        if replace:  # the events stored at these seqs give way to these
            conn.execute(self._DELETE_EVENT, [{"b_run_id": r, "b_seq": q} for r, q in fresh])
        inserted = direct.insert_events(conn, [event_row(e, raw) for e, raw in fresh.values()])
        conflicts = []
        if dupes := duplicates(fresh, inserted):
            stored = conn.execute(self._STORED, {"keys": dupes})
            conflicts = conflicts_of(fresh, {(r.run_id, r.seq): r.payload for r in stored})
        effects = Effects.of(rows, fresh, inserted)
        if effects.artifacts:
            conn.execute(self._UPSERT_ARTIFACTS, [a._asdict() for a in effects.artifacts])
        if effects.runs:
            direct.update_runs(conn, effects.runs)
            direct.update_task_statuses(conn, effects.task_statuses)
        if effects.task_counters:
            conn.execute(self._UPDATE_TASK_COUNTERS, _binds(effects.task_counters))
        if effects.approval_settles:
            conn.execute(self._SETTLE_APPROVALS, _binds(effects.approval_settles))
        if effects.approvals:
            conn.execute(self._INSERT_APPROVALS, [a._asdict() for a in effects.approvals])
        deliveries = sqlite_deliveries(conn, effects.stored, datetime.now(UTC))
        return Stored(effects.stored, conflicts, deliveries)

    async def close(self) -> None:
        pass  # the writer belongs to the store


def _binds(values: list[Any]) -> list[dict[str, Any]]:
    return [{f"b_{k}": v for k, v in zip(t._fields, t, strict=True)} for t in values]


_JSON_COLUMNS = frozenset({"plan", "results", "approval"})
_JSON_AT = tuple(i for i, c in enumerate(("id", *RUN_COLUMNS)) if c in _JSON_COLUMNS)


def _json(value: Any) -> str | None:
    # The connection's jsonb codec (SQLAlchemy's, see its asyncpg dialect) takes JSON text.
    return None if value is None else msgspec.json.encode(value).decode()


class PgEventBatch:
    SELECT_RUNS = (
        f"SELECT id, task_id, {', '.join(RUN_COLUMNS)} FROM runs "
        "WHERE id = ANY($1::varchar[]) ORDER BY id FOR UPDATE"
    )
    # The batch's runs locked and read, its events of those runs inserted (a redelivery changes
    # nothing: ON CONFLICT DO NOTHING), and the webhooks they may go to read, in one statement:
    # one round trip. Each locked run comes back with the seqs of its events that are new.
    LOCK_AND_INSERT = (
        f"WITH locked AS ({SELECT_RUNS}), "
        'ins AS (INSERT INTO run_events (run_id, task_id, seq, event_type, "timestamp", payload) '
        "SELECT * FROM unnest($2::varchar[], $3::varchar[], $4::int[], $5::varchar[], "
        "$6::timestamptz[], $7::text[]) AS e (run_id, task_id, seq, event_type, ts, payload) "
        "WHERE e.run_id IN (SELECT id FROM locked) "
        "ON CONFLICT (run_id, seq) DO NOTHING RETURNING run_id, seq) "
        "SELECT locked.*, ARRAY(SELECT seq FROM ins WHERE ins.run_id = locked.id) AS inserted, "
        f"({SUBSCRIBERS_JSON}) AS hooks FROM locked"
    )
    # A run's changes and its task's status (while the run is the task's latest) in one statement,
    # one round trip for the whole batch (executemany); the task shows the run's status and time.
    UPDATE_RUN_AND_TASK = (
        "WITH run AS (UPDATE runs SET "
        + ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(RUN_COLUMNS))
        + " WHERE id = $1) "
        f"UPDATE tasks SET status = $2, updated_at = ${len(RUN_COLUMNS) + 1} "
        f"WHERE id = ${len(RUN_COLUMNS) + 2} AND latest_run_id = $1"
    )
    STORED = (
        "SELECT run_id, seq, payload FROM run_events "
        "WHERE (run_id, seq) IN (SELECT * FROM unnest($1::varchar[], $2::int[]))"
    )
    DELETE_EVENTS = (
        "DELETE FROM run_events WHERE (run_id, seq) IN (SELECT * FROM unnest($1::varchar[], $2::int[]))"
    )
    UPDATE_TASK_COUNTERS = (
        "UPDATE tasks SET total_runs = total_runs + 1, successful_runs = successful_runs + $2, "
        "failed_runs = failed_runs + $3, last_run_duration = $4, last_error = $5, updated_at = $6 "
        "WHERE id = $1"
    )
    SETTLE_APPROVALS = (
        "UPDATE approvals SET status = $3, decided_at = $4, feedback = $5 "
        "WHERE run_id = $1 AND status = 'pending' AND ($2::int IS NULL OR plan_version = $2::int)"
    )
    INSERT_APPROVALS = (
        "INSERT INTO approvals (id, run_id, task_id, plan, plan_version, status, requested_at, deadline, "
        "decided_at, decided_by, feedback) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
        "ON CONFLICT (id) DO NOTHING"
    )
    UPSERT_ARTIFACTS = (
        "INSERT INTO artifacts (run_id, task_id, name, size, content_type, created_at) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id, name) DO UPDATE SET "
        "size = EXCLUDED.size, content_type = EXCLUDED.content_type, created_at = EXCLUDED.created_at"
    )

    def __init__(self, url: URL, connections: int = 3) -> None:
        # Held connections (`held.py`): a batch is BEGIN, one statement per kind of change, COMMIT.
        self.held = HeldConnections(
            create_async_engine(
                url, pool_size=connections, max_overflow=0, pool_pre_ping=False, pool_reset_on_return=None
            ),
            connections,
        )

    async def close(self) -> None:
        await self.held.close()

    async def store(self, batch: Batch, replace: bool = False) -> Stored:
        # A connection that broke is dropped (an error the server answered with leaves it good);
        # the ingest retries the batch.
        async with self.held.connection(broken=_not_server_error) as db:
            async with db.transaction():
                return await self._store(db, batch, replace)

    async def _store(self, db: Any, batch: Batch, replace: bool) -> Stored:
        ids = sorted({e.run_id for e, _ in batch})
        unique = once_each(batch)
        if replace:  # the events stored at these seqs give way to these (conflicts.py)
            await db.fetch(self.SELECT_RUNS, ids)  # the runs locked first, as by every batch
            await db.execute(self.DELETE_EVENTS, *(list(c) for c in zip(*unique, strict=True)))
        # The statement skips the events of unknown runs (new_candidates below says which).
        locked = await db.fetch(self.LOCK_AND_INSERT, ids, *_columns(unique))
        rows = {r["id"]: {k: r[k] for k in ("id", "task_id", *RUN_COLUMNS)} for r in locked}
        fresh = new_candidates(rows, batch)
        if not fresh:
            return Stored([], [])
        inserted = {(r["id"], seq) for r in locked for seq in r["inserted"]}
        conflicts = []
        if dupes := duplicates(fresh, inserted):
            stored = await db.fetch(self.STORED, *(list(c) for c in zip(*dupes, strict=True)))
            conflicts = conflicts_of(fresh, {(r["run_id"], r["seq"]): r["payload"] for r in stored})
        effects = Effects.of(rows, fresh, inserted)
        if effects.artifacts:
            await db.executemany(self.UPSERT_ARTIFACTS, effects.artifacts)
        if effects.runs:
            await db.executemany(
                self.UPDATE_RUN_AND_TASK,
                [_pg_run(r, t.task_id) for r, t in zip(effects.runs, effects.task_statuses, strict=True)],
            )
        if effects.task_counters:
            await db.executemany(self.UPDATE_TASK_COUNTERS, effects.task_counters)
        if effects.approval_settles:
            await db.executemany(self.SETTLE_APPROVALS, effects.approval_settles)
        if effects.approvals:
            await db.executemany(self.INSERT_APPROVALS, [_pg_approval(a) for a in effects.approvals])
        hooks = msgspec.json.decode(locked[0]["hooks"]) if inserted else []
        deliveries = await pg_deliveries(db, hooks, effects.stored, datetime.now(UTC))
        return Stored(effects.stored, conflicts, deliveries)


def _columns(fresh: dict[tuple[str, int], tuple[Any, bytes]]) -> list[list[Any]]:
    """The events as the insert's arrays, one per column."""
    return [list(c) for c in zip(*(event_row(e, raw) for e, raw in fresh.values()), strict=True)]


def _pg_run(change: tuple[Any, ...], task_id: str) -> list[Any]:
    values = list(change)
    for i in _JSON_AT:
        values[i] = _json(values[i])
    values.append(task_id)
    return values


def _pg_approval(row: ApprovalRow) -> list[Any]:
    return [*row[:3], _json(row.plan), *row[4:9], _json(row.decided_by), row.feedback]


def _not_server_error(exc: BaseException) -> bool:
    """Not an error the server answered with (a constraint, bad data): the connection may be gone."""
    import asyncpg

    return not isinstance(exc, asyncpg.PostgresError) or isinstance(exc, asyncpg.PostgresConnectionError)

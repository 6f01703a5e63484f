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
- PostgreSQL (`PgEventBatch`), two ways. The locking way: the same statements as prepared SQL
  straight over asyncpg on a few held connections of its own (`held.py`; each batch is one
  explicit transaction): BEGIN, one statement that locks the runs FOR UPDATE, inserts the events
  (INSERT ... SELECT FROM unnest(...)) and reads the webhooks, each run's and its task's update in
  one statement (pipelined executemany), COMMIT: four round trips for a batch of progress events.
  Through SQLAlchemy's execution layer the batch cost several times the database's own work.
  The one-statement way, for the next progress events of a run the batch wrote last
  (`known_runs.py`): their effects computed from the row as written, then one statement (its own
  transaction) writes the run where its version is still that one, inserts the events and keeps
  the task's status: one round trip. What it leaves (a run changed meanwhile, events a webhook
  wants) goes the locking way.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import bindparam, or_, select, tuple_
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import create_async_engine

from agentbus.gateway.store.approval_effects import ApprovalRow
from agentbus.gateway.store.effects import (
    RUN_COLUMNS,
    RUN_READ,
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
from agentbus.gateway.store.known_runs import KnownRuns
from agentbus.gateway.store.sqlite_direct import SqliteDirect
from agentbus.gateway.store.tables import approvals, artifacts, run_events, runs, tasks
from agentbus.gateway.store.webhooks import SUBSCRIBERS_JSON, pg_deliveries, sqlite_deliveries
from agentbus.gateway.store.writer import Writer

log = logging.getLogger(__name__)
# The one-statement path is off for a while after a webhook wanted a batch's events (their
# deliveries are made by the locking path), or when more than a quarter of MISSES_OVER runs it
# tried had changed meanwhile (gateway copies sharing the same runs' events: each miss is one
# round trip more than the locking path alone).
HOOKED_OFF_S = 5.0
MISSES_OVER = 64
MISSED_OFF_S = 30.0


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
# RUN_COLUMNS' types as the one-statement path binds them, from the table (JSON as its text, cast
# back in the statement).
_PG_RUN_TYPES = tuple(
    "text" if c in _JSON_COLUMNS else runs.c[c].type.compile(dialect=postgresql.dialect())
    for c in RUN_COLUMNS
)
_JSON_AT = tuple(i for i, c in enumerate(("id", *RUN_COLUMNS)) if c in _JSON_COLUMNS)


def _insert_events(first: int, of: str) -> str:
    """The batch's events inserted (parameters $first.. $first+5: an array per column), those of the
    runs in the CTE `of` only; a stored (run_id, seq) is left as it is. Returns the (run_id, seq)
    inserted."""
    arrays = ", ".join(
        f"${first + i}::{t}[]"
        for i, t in enumerate(("varchar", "varchar", "int", "varchar", "timestamptz", "text"))
    )
    return (
        'INSERT INTO run_events (run_id, task_id, seq, event_type, "timestamp", payload) '
        f"SELECT * FROM unnest({arrays}) AS e (run_id, task_id, seq, event_type, ts, payload) "
        f"WHERE e.run_id IN (SELECT id FROM {of}) "
        "ON CONFLICT (run_id, seq) DO NOTHING RETURNING run_id, seq"
    )


def _json(value: Any) -> str | None:
    # The connection's jsonb codec (SQLAlchemy's, see its asyncpg dialect) takes JSON text.
    return None if value is None else msgspec.json.encode(value).decode()


class PgEventBatch:
    SELECT_RUNS = (
        f"SELECT id, task_id, {', '.join(RUN_COLUMNS)}, xmin::text AS xmin FROM runs "
        "WHERE id = ANY($1::varchar[]) ORDER BY id FOR UPDATE"
    )
    # The batch's runs locked and read, its events of those runs inserted (a redelivery changes
    # nothing: ON CONFLICT DO NOTHING), and the webhooks they may go to read, in one statement:
    # one round trip. Each locked run comes back with the seqs of its events that are new.
    LOCK_AND_INSERT = (
        f"WITH locked AS ({SELECT_RUNS}), ins AS ({_insert_events(2, 'locked')}) "
        "SELECT locked.*, ARRAY(SELECT seq FROM ins WHERE ins.run_id = locked.id) AS inserted, "
        f"({SUBSCRIBERS_JSON}) AS hooks, (txid_current() % 4294967296)::text AS xid FROM locked"
    )
    # The one-statement path (`known_runs.py`): each run's remembered row, with the batch's effects
    # applied, written where its version (xmin) is still the remembered one, unless a webhook wants
    # one of the batch's event types; the events of the runs written inserted; their tasks' status
    # kept. One statement is its own transaction: one round trip, no lock taken before. What comes
    # back says which runs were written (with their new version) and which events were inserted.
    FAST_BATCH = (
        "WITH v AS (SELECT * FROM unnest($1::varchar[], $2::text[], $3::varchar[], "
        + ", ".join(f"${i + 4}::{t}[]" for i, t in enumerate(_PG_RUN_TYPES))
        + f") AS v (id, xmin, task_id, {', '.join(RUN_COLUMNS)})), "
        "hooked AS (SELECT EXISTS (SELECT FROM webhooks "
        "WHERE events ? '*' OR events ?| $22::text[]) AS yes), "
        "upd AS (UPDATE runs SET "
        + ", ".join(f"{c} = v.{c}::jsonb" if c in _JSON_COLUMNS else f"{c} = v.{c}" for c in RUN_COLUMNS)
        + " FROM v WHERE runs.id = v.id AND runs.xmin = v.xmin::xid AND NOT (SELECT yes FROM hooked) "
        "RETURNING runs.id, runs.xmin::text AS xmin, runs.task_id, runs.status, runs.updated_at), "
        f"ins AS ({_insert_events(16, 'upd')}), "
        "tsk AS (UPDATE tasks SET status = upd.status, updated_at = upd.updated_at FROM upd "
        "WHERE tasks.id = upd.task_id AND tasks.latest_run_id = upd.id) "
        "SELECT (SELECT yes FROM hooked) AS hooked, "
        "(SELECT coalesce(json_agg(json_build_array(id, xmin)), '[]')::text FROM upd) AS written, "
        "(SELECT coalesce(json_agg(json_build_array(run_id, seq)), '[]')::text FROM ins) AS inserted"
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
        self.known = KnownRuns()
        self._off_until = 0.0  # until then (time.monotonic()), every batch goes the locking way
        self._tried = self._missed = 0  # runs sent the one-statement way, and those it left
        self.held = HeldConnections(
            create_async_engine(
                url,
                pool_size=connections,
                max_overflow=0,
                pool_pre_ping=False,
                pool_reset_on_return=None,
                # Plan each statement once: its parameters are arrays that unnest() to a row or
                # two, which PostgreSQL's generic plan prices at 100 rows, so under `auto` it
                # planned the one-statement path again on every execution (0.2 ms of its ~0.45 ms
                # in the server). These statements go by primary keys: one plan fits every batch.
                connect_args={"server_settings": {"plan_cache_mode": "force_generic_plan"}},
            ),
            connections,
        )

    async def close(self) -> None:
        await self.held.close()

    async def store(self, batch: Batch, replace: bool = False) -> Stored:
        # A connection that broke is dropped (an error the server answered with leaves it good);
        # the ingest retries the batch.
        rest = batch
        done = Stored([], [])
        if not replace and len(self.known) and time.monotonic() >= self._off_until:
            rows, xmins, fast, rest = self.known.split(batch)
            if fast:
                done, missed = await self._store_fast(rows, xmins, fast)
                rest += missed
        if rest:
            async with self.held.connection(broken=_not_server_error) as db:
                async with db.transaction():
                    stored, written = await self._store(db, rest, replace)
            for row, xmin in written:  # committed: the next events of these runs need no lock
                self.known.remember(row, xmin)
            done = Stored(done.events + stored.events, stored.conflicts, stored.deliveries)
        return done

    async def _store_fast(
        self, rows: dict[str, dict[str, Any]], xmins: dict[str, str], batch: Batch
    ) -> tuple[Stored, Batch]:
        """The one-statement path (`known_runs.py`): what it stored, and the events it left to the
        locking path (of runs changed since they were remembered, or all when it cannot take them)."""
        fresh = once_each(batch)  # all new: each is past its run's remembered last_seq
        effects = Effects.of(rows, fresh, set(fresh))
        if effects.task_counters or effects.artifacts or effects.approvals or effects.approval_settles:
            return Stored([], []), batch
        ids = list(rows)
        values = [[_json(rows[i][c]) if c in _JSON_COLUMNS else rows[i][c] for i in ids] for c in RUN_COLUMNS]
        types = sorted({e.__struct_config__.tag for e, _ in fresh.values()})
        task_ids = [rows[i]["task_id"] for i in ids]
        async with self.held.connection(broken=_not_server_error) as db:
            found = await db.fetchrow(
                self.FAST_BATCH, ids, [xmins[i] for i in ids], task_ids, *values, *_columns(fresh), types
            )
        if found["hooked"]:  # a webhook wants these events: their deliveries need the locking path
            self._off_until = time.monotonic() + HOOKED_OFF_S
            return Stored([], []), batch
        written = dict(msgspec.json.decode(found["written"]))
        self._tried += len(rows)
        self._missed += len(rows) - len(written)
        if self._tried >= MISSES_OVER:
            if self._missed * 4 > self._tried:  # another writer of these runs (copies sharing them)
                log.info(
                    "the event batch's one-statement path is off for %.0f s: runs changed meanwhile",
                    MISSED_OFF_S,
                )
                self._off_until = time.monotonic() + MISSED_OFF_S
            self._tried = self._missed = 0
        inserted = {(r, q) for r, q in msgspec.json.decode(found["inserted"])}
        for run_id, row in rows.items():
            if run_id not in written:
                self.known.forget(run_id)  # changed since: its events go the locking way
            elif any(k not in inserted for k in fresh if k[0] == run_id):
                # Cannot happen while every event is stored by this module (see known_runs.py).
                log.error("run %s: events past its last_seq were stored already", run_id)
                self.known.forget(run_id)
            else:
                self.known.remember(row, written[run_id])
        stored = [(e, raw) for key, (e, raw) in fresh.items() if key in inserted]
        return Stored(stored, []), [(e, raw) for e, raw in batch if e.run_id not in written]

    async def _store(
        self, db: Any, batch: Batch, replace: bool
    ) -> tuple[Stored, list[tuple[dict[str, Any], str]]]:
        """The locking path: what it stored, and each locked run's row as committed with its version."""
        ids = sorted({e.run_id for e, _ in batch})
        unique = once_each(batch)
        if replace:  # the events stored at these seqs give way to these (conflicts.py)
            await db.fetch(self.SELECT_RUNS, ids)  # the runs locked first, as by every batch
            await db.execute(self.DELETE_EVENTS, *(list(c) for c in zip(*unique, strict=True)))
        # The statement skips the events of unknown runs (new_candidates below says which).
        locked = await db.fetch(self.LOCK_AND_INSERT, ids, *_columns(unique))
        rows = {r["id"]: {k: r[k] for k in RUN_READ} for r in locked}
        versions = {r["id"]: r["xmin"] for r in locked}
        fresh = new_candidates(rows, batch)
        if not fresh:
            return Stored([], []), [(row, versions[i]) for i, row in rows.items()]
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
        # The runs this transaction updated carry its id as their version (xmin); the others, the one read.
        updated = {r.id for r in effects.runs}
        xid = locked[0]["xid"]
        written = [(row, xid if i in updated else versions[i]) for i, row in rows.items()]
        return Stored(effects.stored, conflicts, deliveries), written


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

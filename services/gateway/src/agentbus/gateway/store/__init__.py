"""`GatewayStore`: the gateway's database. Every engine and every SQL statement of the service.

Controllers, the hub, the ingest and the reaper ask it; none of them builds a query. Three paths
sit behind its one interface, each where the profile put it:
- primary-key reads (`task`, `run`): `RowReader`, straight over sqlite3 or held asyncpg
  connections (`reads.py`);
- writes (`create_task`, `create_run`, `record_decision`, ... and event batches): the `Writer`
  (SQLite: one thread, group commit; PostgreSQL: a pool of its own, `writer.py`); event batches
  on PostgreSQL go straight over asyncpg (`events.py`);
- lists, pages and logs: fast reads too, with totals from trigger-kept counts (`lists.py`);
- everything else (replays, deletes, the rarer queries) through the async engine.
Pool sizes come from the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, or_, select, text
from sqlalchemy.engine import Connection

from agentbus.common.db import make_engine, migrate, read_then_write, redact, wait_for_database
from agentbus.contracts.status import TERMINAL_RUN_STATUSES
from agentbus.gateway.store import lists
from agentbus.gateway.store.admission import HeldRuns, must_hold
from agentbus.gateway.store.approvals import Approvals, settle_by_person
from agentbus.gateway.store.effects import Batch, Stored
from agentbus.gateway.store.eventlog import EventLogReads
from agentbus.gateway.store.events import PgEventBatch, SqliteEventBatch
from agentbus.gateway.store.lists import BadCursor, Page
from agentbus.gateway.store.people import AUDIT_INSERT, AuditEntry, People, audit_row, write_audit
from agentbus.gateway.store.reads import RowReader
from agentbus.gateway.store.tables import api_keys, artifacts, runs, tasks
from agentbus.gateway.store.webhooks import Webhooks
from agentbus.gateway.store.writer import Writer

log = logging.getLogger(__name__)
MIGRATIONS = str(Path(__file__).parent.parent / "migrations")

# Built once; stored rows come back from the statements themselves (RETURNING).
_INSERT_TASK = tasks.insert().returning(*tasks.c)
_NEXT_RUN_NUMBER = (
    tasks.update()
    .where(tasks.c.id == bindparam("b_id"))
    .values(
        next_run_number=tasks.c.next_run_number + 1,
        latest_run_id=bindparam("b_run"),
        status="pending",
        last_run_at=bindparam("b_ts"),
        updated_at=bindparam("b_ts"),
    )
    .returning(tasks.c.next_run_number, tasks.c.max_concurrent_runs)
)
# What a Run shows: not its agent_config, created_by, approval_deadline, held or traceparent.
RUN_SHOWN = (
    "id", "task_id", "run_number", "status", "agent", "require_approval", "max_revision_rounds",
    "plan", "progress", "results", "error_message", "started_at", "completed_at", "duration",
    "approval", "labels", "last_seq", "created_at", "updated_at",
)  # fmt: skip
_INSERT_RUN = runs.insert().returning(*runs.c)
_UNQUEUED = (
    runs.update()
    .where(runs.c.id == bindparam("b_id"))
    .values(status="failed", error_message="could not be queued: broker unavailable")
)


def _audit(conn: Connection, entry: AuditEntry | None) -> None:
    """The audit entry of a change, in the change's transaction."""
    if entry is not None:
        write_audit(conn, entry)


class TaskGone(Exception):
    """The task was deleted between reading it and writing to it."""


class GatewayStore(EventLogReads):
    def __init__(self, database_url: str, pool_size: int = 6, read_connections: int = 8) -> None:
        # The general pool serves lists, logs and the rarer writes; hot writes, primary-key reads
        # and (on PostgreSQL) event batches have their own connections.
        self.engine = make_engine(database_url, pool_size=pool_size)
        self.dialect = self.engine.dialect.name
        self.writer = Writer(self.engine)
        self.reader = RowReader(self.engine, pg_connections=read_connections)
        self.events: SqliteEventBatch | PgEventBatch = (
            PgEventBatch(self.engine.url) if self.dialect == "postgresql" else SqliteEventBatch(self.writer)
        )
        self._folding: asyncio.Task[None] | None = None
        self._dead_deltas = 0  # folded count deltas not vacuumed yet (PostgreSQL)
        # Pages read the columns a REST object shows, its JSON sent on as stored (`lists.Lists`).
        self._task_lists = lists.Lists(
            tasks,
            [c.name for c in tasks.c if c.name not in ("latest_run_id", "next_run_number")],
            raw=("config", "agent_config", "approvers"),
        )
        self._run_lists = lists.Lists(runs, RUN_SHOWN, raw=("plan", "results", "labels"))
        self._logs = lists.Logs()
        self.approvals = Approvals(self.engine, self.reader)  # the approvals inbox's reads
        self.people = People(self.engine, self.writer)  # API keys and the audit trail
        self.held = HeldRuns(self.engine, self.writer)  # runs over their task's max_concurrent_runs
        self.webhooks = Webhooks(self.engine, self.writer)  # webhooks and their deliveries

    async def open(self) -> None:
        log.info("database %s", redact(str(self.engine.url)))
        await wait_for_database(self.engine)
        await migrate(self.engine, MIGRATIONS, "alembic_version_gateway")
        if self.dialect == "postgresql":
            self._folding = asyncio.create_task(self._fold_counts(), name="fold-row-counts")

    async def _fold_counts(self, every_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.fold_counts()
            except Exception as exc:  # the database is away: next round
                log.debug("folding row counts failed: %r", exc)

    async def fold_counts(self) -> bool:
        """Fold the count deltas into the counts (PostgreSQL), and vacuum the folded ones away once
        there are `lists.VACUUM_AFTER` of them; False when another copy is at it."""
        async with self.engine.begin() as conn:
            if not (await conn.execute(text(lists.FOLD_LOCK))).scalar():
                return False
            folded = (await conn.execute(text(lists.FOLD))).all()
            zeros = [name for name, n, _ in folded if n == 0]
            if zeros:
                await conn.execute(text(lists.FOLD_ZEROS), {"names": zeros})
        self._dead_deltas += sum(deltas for _, _, deltas in folded)
        if self._dead_deltas >= lists.VACUUM_AFTER:
            async with self.engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql(lists.VACUUM_DELTAS)
            self._dead_deltas = 0
        return True

    async def close(self) -> None:
        if self._folding is not None:
            self._folding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._folding
        await self.events.close()
        await self.writer.close()
        await self.reader.close()
        await self.engine.dispose()

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            async with self.engine.connect() as conn:
                await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout)
            return True
        except Exception:
            return False

    async def api_key(self, key_id: str) -> Any:
        """An API key's row (salt, hash, name, role, expires_at, revoked_at ...), or None: what checks
        a credential, read as fast as a task by id (it is read again every `KEY_CACHE_S`)."""
        return await self.reader.one(api_keys, key_id)

    # --- tasks ---------------------------------------------------------------------------------

    async def task(self, task_id: str) -> Any:
        """The task's row (attributes named after the columns), or None."""
        return await self.reader.one(tasks, task_id)

    async def create_task(self, values: dict[str, Any], audit: AuditEntry | None = None) -> Any:
        def store(conn: Connection) -> Any:
            row = conn.execute(_INSERT_TASK, values).one()
            _audit(conn, audit)
            return row

        return await self.writer(store)

    async def update_task(
        self, task_id: str, changes: dict[str, Any], audit: AuditEntry | None = None
    ) -> Any:
        stmt = tasks.update().where(tasks.c.id == task_id).values(**changes).returning(*tasks.c)

        def store(conn: Connection) -> Any:
            row = conn.execute(stmt).first()
            if row is not None:
                _audit(conn, audit)
            return row

        return await self.writer(store)

    async def list_tasks(self, status: str | None, skip: int, limit: int, cursor: str | None = None) -> Page:
        """Tasks newest first, with the columns a Task shows (`config`, `agent_config` and
        `approvers` as their JSON text, `msgspec.Raw`); raises BadCursor for a cursor this store did
        not hand out."""
        return await self._page(self._task_lists, {"status": status}, skip, limit, cursor)

    async def task_runs(self, task_id: str) -> list[Any]:
        """(id, task_id, agent, status, held) of each of the task's runs."""
        async with self.engine.connect() as conn:
            return list(
                await conn.execute(
                    select(runs.c.id, runs.c.task_id, runs.c.agent, runs.c.status, runs.c.held).where(
                        runs.c.task_id == task_id
                    )
                )
            )

    async def delete_task(self, task_id: str, audit: AuditEntry | None = None) -> list[tuple[str, str]]:
        """Delete the task with its runs, events and artifacts index; returns (run_id, name) of its
        artifacts."""
        async with read_then_write(self.engine).begin() as conn:
            arts = await conn.execute(
                select(artifacts.c.run_id, artifacts.c.name).where(artifacts.c.task_id == task_id)
            )
            found = [(a.run_id, a.name) for a in arts]
            if (await conn.execute(delete(tasks).where(tasks.c.id == task_id))).rowcount and audit:
                await conn.execute(AUDIT_INSERT, audit_row(audit))
        return found

    # --- runs ----------------------------------------------------------------------------------

    async def run(self, run_id: str) -> Any:
        """The run's row, or None."""
        return await self.reader.one(runs, run_id)

    async def create_run(self, values: dict[str, Any], audit: AuditEntry | None = None) -> Any:
        """Store a run with the task's next run number, `held` when its task's max_concurrent_runs
        says so (store/admission.py); raises TaskGone if the task was just deleted."""

        def store(conn: Connection) -> Any:
            # The counter update locks the task row: concurrent creates get distinct numbers.
            task = conn.execute(
                _NEXT_RUN_NUMBER,
                {"b_id": values["task_id"], "b_run": values["id"], "b_ts": values["created_at"]},
            ).first()
            if task is None:
                raise TaskGone(values["task_id"])
            number, limit = task
            held = limit is not None and must_hold(conn, values["task_id"], limit)
            row = conn.execute(_INSERT_RUN, {**values, "run_number": number, "held": held}).one()
            _audit(conn, audit)
            return row

        return await self.writer(store)

    async def mark_unqueued(self, run_id: str) -> None:
        await self.writer(lambda conn: conn.execute(_UNQUEUED, {"b_id": run_id}))

    async def update_run_labels(
        self, run_id: str, labels: dict[str, str], at: datetime, audit: AuditEntry | None = None
    ) -> Any:
        stmt = (
            runs.update().where(runs.c.id == run_id).values(labels=labels, updated_at=at).returning(*runs.c)
        )

        def store(conn: Connection) -> Any:
            row = conn.execute(stmt).first()
            if row is not None:
                _audit(conn, audit)
            return row

        return await self.writer(store)

    async def record_decision(
        self, run_id: str, approval: dict[str, Any], at: datetime, audit: AuditEntry | None = None
    ) -> bool:
        """Store a decision on a waiting run, and on its pending approval request; False when it is
        not waiting (or already decided). Conditional, so of two concurrent decisions exactly one wins."""
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.status == "awaiting_approval", runs.c.approval.is_(None))
            .values(approval=approval, updated_at=at)
        )

        def store(conn: Connection) -> bool:
            if not conn.execute(stmt).rowcount:
                return False
            settle_by_person(conn, run_id, approval, at)
            _audit(conn, audit)
            return True

        return bool(await self.writer(store))

    async def list_runs(
        self, task_id: str | None, status: str | None, skip: int, limit: int, cursor: str | None = None
    ) -> Page:
        """Runs newest first, with the columns a Run shows (`plan`, `results` and `labels` as their
        JSON text, `msgspec.Raw`); raises BadCursor for a cursor this store did not hand out."""
        return await self._page(self._run_lists, {"task_id": task_id, "status": status}, skip, limit, cursor)

    async def unfinished(self, run_ids: Sequence[str]) -> list[str]:
        """The runs among these that have not reached a terminal status."""
        if not run_ids:
            return []
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(runs.c.id, runs.c.status).where(runs.c.id.in_(list(run_ids))))
            return [r.id for r in rows if r.status not in TERMINAL_RUN_STATUSES]

    async def delete_run(self, run_id: str, audit: AuditEntry | None = None) -> list[str]:
        """Delete the run with its events and artifacts index; returns its artifacts' names."""
        async with read_then_write(self.engine).begin() as conn:
            names = list(
                (await conn.execute(select(artifacts.c.name).where(artifacts.c.run_id == run_id))).scalars()
            )
            if (await conn.execute(delete(runs).where(runs.c.id == run_id))).rowcount and audit:
                await conn.execute(AUDIT_INSERT, audit_row(audit))
        return names

    async def pending_decisions(self, decided_before: datetime) -> list[Any]:
        """(id, task_id, agent, approval) of waiting runs whose stored decision no runner has acted on."""
        async with self.engine.connect() as conn:
            return list(
                await conn.execute(
                    select(runs.c.id, runs.c.task_id, runs.c.agent, runs.c.approval).where(
                        runs.c.status == "awaiting_approval",
                        runs.c.approval.is_not(None),
                        runs.c.updated_at < decided_before,
                    )
                )
            )

    async def stale_runs(self, changed_before: datetime) -> list[Any]:
        """Runs a runner should be acting on that have not moved since `changed_before`: running ones
        (held by a runner), and waiting ones whose approval deadline passed before it (a parked run is
        held by no one until its decision or its deadline wakes it)."""
        waiting = runs.c.status == "awaiting_approval"
        async with self.engine.connect() as conn:
            return list(
                await conn.execute(
                    select(
                        runs.c.id,
                        runs.c.task_id,
                        runs.c.agent,
                        runs.c.last_seq,
                        runs.c.started_at,
                        runs.c.status,
                        runs.c.approval_deadline,
                    ).where(
                        or_(
                            and_(runs.c.status == "running", runs.c.updated_at < changed_before),
                            and_(waiting, runs.c.approval_deadline < changed_before),
                            # Waiting since before deadlines were stored (migration 0004).
                            and_(
                                waiting,
                                runs.c.approval_deadline.is_(None),
                                runs.c.updated_at < changed_before,
                            ),
                        )
                    )
                )
            )

    async def runs_by_agent(self) -> dict[str, tuple[int, int, int]]:
        """agent kind -> (runs, finished runs, completed runs)."""
        finished = case((runs.c.status.in_(sorted(TERMINAL_RUN_STATUSES)), 1), else_=0)
        completed = case((runs.c.status == "completed", 1), else_=0)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(runs.c.agent, func.count(), func.sum(finished), func.sum(completed)).group_by(
                    runs.c.agent
                )
            )
            return {r[0]: (int(r[1]), int(r[2] or 0), int(r[3] or 0)) for r in rows}

    # --- artifacts -----------------------------------------------------------------------------

    async def artifacts(self, run_id: str) -> list[Any]:
        async with self.engine.connect() as conn:
            return list(
                await conn.execute(
                    select(artifacts).where(artifacts.c.run_id == run_id).order_by(artifacts.c.id)
                )
            )

    async def artifact(self, run_id: str, name: str) -> Any:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(
                    select(artifacts).where(artifacts.c.run_id == run_id, artifacts.c.name == name)
                )
            ).first()

    # --- events --------------------------------------------------------------------------------

    async def store_events(self, batch: Batch) -> Stored:
        """Store new events and their effects in one transaction: the ones not seen before, and the
        conflicting duplicates (a stored (run_id, seq) with other content), which are not stored."""
        return await self.events.store(batch)

    async def replace_event(self, event: Any, raw: bytes) -> Stored:
        """Store `event` in place of the one stored at its (run_id, seq), with its effects."""
        return await self.events.store([(event, raw)], replace=True)

    async def logs(self, run_id: str, since: int, limit: int) -> tuple[list[str], int]:
        """The run's stored events with seq > since, in seq order (at most `limit`), and their total."""
        rows = await self.reader.fetch(self._logs.query(limit), (run_id, since))
        if len(rows) < limit:  # all of them
            return [r.payload for r in rows], len(rows)
        total = (await self.reader.fetch(lists.LOG_TOTAL, (run_id, since)))[0].n
        return [r.payload for r in rows], total

    async def last_event_payload(self, run_id: str, event_type: str) -> str | None:
        rows = await self.reader.fetch(lists.LAST_EVENT, (run_id, event_type))
        return rows[0].payload if rows else None

    # --- shared --------------------------------------------------------------------------------

    async def _page(
        self, kind: lists.Lists, filters: dict[str, str | None], skip: int, limit: int, cursor: str | None
    ) -> Page:
        given = {k: v for k, v in filters.items() if v}
        names = {"task_id": "task"}
        name = lists.count_name(kind.table.name, {names.get(k, k): v for k, v in given.items()})
        values: list[Any] = [name, *given.values()]
        if cursor is not None:
            values += [(at := lists.decode_cursor(cursor)).created_at, at.created_at, at.id]
        if skip:
            values.append(skip)
        # One row more than the page: whether a next page exists, without counting. Each row
        # carries the total; an empty page reads it alone.
        rows = await self.reader.fetch(
            kind.query(tuple(given), cursor is not None, limit + 1, skip > 0), values
        )
        total = rows[0].total if rows else (await self.reader.fetch(lists.COUNT, (name,)))[0].n
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, int(total), lists.encode_cursor(rows[-1]) if more else None)


__all__ = ["MIGRATIONS", "BadCursor", "GatewayStore", "Page", "TaskGone"]

"""Runs under a task's `max_concurrent_runs`: every statement of admission and release.

A run is *live* while it has not ended and is not held; a *held* run (`runs.held`) is one the
gateway has not confirmed queued: its task had `max_concurrent_runs` live runs, or older held runs,
when it was created. Every unit that decides on slots first locks the task's row, so admissions and
releases of one task are serialised, across gateway copies too:
- PostgreSQL: the run-number UPDATE of `create_run`, or `SELECT ... FOR UPDATE` here; a run that
  ends meanwhile (the event path does not take the lock) only frees a slot, and its terminal event
  triggers a release of its own;
- SQLite: the writer's transactions begin IMMEDIATE, which is the database's one write lock
  (SQLAlchemy renders no FOR UPDATE there): the same statements serve both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, case, func, select, true
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.contracts.status import RUN_STATUSES, TERMINAL_RUN_STATUSES
from agentbus.gateway.store.tables import runs, tasks
from agentbus.gateway.store.writer import Writer

# Listed rather than "not terminal": an IN on few values can use ix_runs_status_created.
LIVE_STATUSES = tuple(s for s in RUN_STATUSES if s not in TERMINAL_RUN_STATUSES)
_HELD = runs.c.held == true()
_UNENDED = runs.c.status.in_(LIVE_STATUSES)


def _counts(conn: Connection, task_id: str) -> tuple[int, int]:
    """(live runs, held runs that have not ended) of the task."""
    held = func.coalesce(func.sum(case((_HELD, 1), else_=0)), 0)
    live = func.coalesce(func.sum(case((_HELD, 0), else_=1)), 0)
    row = conn.execute(select(live, held).where(runs.c.task_id == task_id, _UNENDED)).one()
    return int(row[0]), int(row[1])


def must_hold(conn: Connection, task_id: str, limit: int) -> bool:
    """Whether a run created now must be held: the task (locked by the caller) has `limit` live
    runs, or held runs waiting (a new run never overtakes them)."""
    live, held = _counts(conn, task_id)
    return held > 0 or live >= limit


def releasable(conn: Connection, task_id: str) -> tuple[Any, list[Any]]:
    """The task's row and its oldest held runs (by run number) that fit its free slots, under the
    task's lock; (None, []) when the task is gone. Nothing is changed: the caller queues them, and
    only then marks them not held (`unhold`)."""
    task = conn.execute(select(tasks).where(tasks.c.id == task_id).with_for_update()).first()
    if task is None:
        return None, []
    query = select(runs).where(runs.c.task_id == task_id, _HELD, _UNENDED).order_by(runs.c.run_number)
    limit = task.max_concurrent_runs
    if limit is not None:
        free = limit - _counts(conn, task_id)[0]
        if free <= 0:
            return task, []
        query = query.limit(free)
    return task, list(conn.execute(query))


def unhold(conn: Connection, task_id: str, run_ids: Sequence[str]) -> int:
    """Mark these runs of the task queued (not held), under the task's lock (so a release never
    sees them held in one statement and not in the next); how many changed. The runs are locked
    before the task, in the order the event batch transaction takes them, which also locks runs and
    then updates their tasks: the other order could deadlock with it."""
    mine = and_(runs.c.id.in_(list(run_ids)), runs.c.task_id == task_id)
    conn.execute(select(runs.c.id).where(mine).order_by(runs.c.id).with_for_update())
    conn.execute(select(tasks.c.id).where(tasks.c.id == task_id).with_for_update())
    return conn.execute(runs.update().where(mine, _HELD).values(held=False)).rowcount


class HeldRuns:
    """The store's side of admission (`GatewayStore.held`); `must_hold` runs inside `create_run`."""

    def __init__(self, engine: AsyncEngine, writer: Writer) -> None:
        self.engine = engine
        self.writer = writer

    async def releasable(self, task_id: str) -> tuple[Any, list[Any]]:
        return await self.writer(lambda conn: releasable(conn, task_id))

    async def unhold(self, task_id: str, run_ids: Sequence[str]) -> int:
        return await self.writer(lambda conn: unhold(conn, task_id, run_ids))

    async def tasks(self) -> list[tuple[str, bool]]:
        """The tasks that have held runs (ix_runs_held), each with whether it has a free slot now."""
        waiting = select(runs.c.task_id).where(_HELD, _UNENDED).distinct().scalar_subquery()
        live = func.coalesce(func.sum(case((_HELD, 0), else_=1)), 0)
        query = (
            select(tasks.c.id, tasks.c.max_concurrent_runs, live)
            .join(runs, runs.c.task_id == tasks.c.id)
            .where(tasks.c.id.in_(waiting), _UNENDED)
            .group_by(tasks.c.id, tasks.c.max_concurrent_runs)
        )
        async with self.engine.connect() as conn:
            rows = await conn.execute(query)
            return [(r[0], r[1] is None or int(r[2]) < r[1]) for r in rows]


__all__ = ["LIVE_STATUSES", "HeldRuns", "must_hold", "releasable", "unhold"]

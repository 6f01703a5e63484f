"""The SQLite event batch's hot statements, sent straight to the writer's DB-API connection.

SQLAlchemy's execution of a statement cost several times the statement itself on the one writer
thread every change goes through: a batch of one progress event spent about 0.3 ms in Core against
45 us in sqlite3 for the same statements. Values are bound and read with SQLAlchemy's own type
processors for each column on the connection's dialect, so what is stored and what is read are what
Core stores and reads (`tests/integration/test_sqlite_direct.py` compares both).

The statements run in the writer unit's transaction, on the same connection (the DB-API
connection under SQLAlchemy's; with aiosqlite under `run_sync`, its DB-API adapter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Dialect

from agentbus.gateway.store.effects import RUN_COLUMNS, RUN_READ, EventRow, RunChange, TaskStatusChange
from agentbus.gateway.store.tables import run_events, runs, tasks

Processor = Callable[[Any], Any] | None

_EVENT_COLUMNS = EventRow._fields
# At most this many rows per INSERT (6 variables each; SQLite allows 32,766 per statement).
_INSERT_CHUNK = 1000

_SELECT_RUNS = f"SELECT {', '.join(RUN_READ)} FROM runs WHERE id IN ({{}}) ORDER BY id"
_INSERT_EVENTS = (
    f"INSERT INTO run_events ({', '.join(_EVENT_COLUMNS)}) VALUES {{}} "
    "ON CONFLICT (run_id, seq) DO NOTHING RETURNING run_id, seq"
)
_UPDATE_RUN = f"UPDATE runs SET {', '.join(f'{c} = ?' for c in RUN_COLUMNS)} WHERE id = ?"
_UPDATE_TASK_STATUS = "UPDATE tasks SET status = ?, updated_at = ? WHERE id = ? AND latest_run_id = ?"


def processors(
    table: Table, names: Sequence[str], dialect: Dialect, read: bool = False
) -> tuple[Processor, ...]:
    """SQLAlchemy's own processors of the columns on `dialect`: how Core binds their values (or,
    `read`, converts what it reads), for statements sent straight to the driver."""
    out = []
    for name in names:
        impl = table.c[name].type.dialect_impl(dialect)
        out.append(impl.result_processor(dialect, None) if read else impl.bind_processor(dialect))
    return tuple(out)


def _apply(processors: tuple[Processor, ...], values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(v if p is None else p(v) for p, v in zip(processors, values, strict=True))


class SqliteDirect:
    """The batch's hot statements with the processors of one dialect (the writer's); each runs in the
    transaction of the connection it is given."""

    def __init__(self, dialect: Dialect) -> None:
        self.read_run = processors(runs, RUN_READ, dialect, read=True)
        self.bind_event = processors(run_events, _EVENT_COLUMNS, dialect)
        self.bind_run = processors(runs, (*RUN_COLUMNS, "id"), dialect)
        self.bind_task_status = processors(tasks, ("status", "updated_at", "id", "latest_run_id"), dialect)

    def runs(self, conn: Connection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The runs of `ids` that exist: id -> {id, task_id, RUN_COLUMNS}, as Core reads them."""
        cur = cursor(conn)
        cur.execute(_SELECT_RUNS.format(", ".join("?" * len(ids))), tuple(ids))
        rows = cur.fetchall()
        return {row[0]: dict(zip(RUN_READ, _apply(self.read_run, row), strict=True)) for row in rows}

    def insert_events(self, conn: Connection, rows: Sequence[EventRow]) -> set[tuple[str, int]]:
        """Insert the events (a stored (run_id, seq) is left as it is); the (run_id, seq) inserted."""
        cur = cursor(conn)
        inserted: set[tuple[str, int]] = set()
        for start in range(0, len(rows), _INSERT_CHUNK):
            chunk = rows[start : start + _INSERT_CHUNK]
            values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
            params = [v for row in chunk for v in _apply(self.bind_event, row)]
            cur.execute(_INSERT_EVENTS.format(values), params)
            inserted.update((run_id, seq) for run_id, seq in cur.fetchall())
        return inserted

    def update_runs(self, conn: Connection, changes: Sequence[RunChange]) -> None:
        cursor(conn).executemany(
            _UPDATE_RUN, [_apply(self.bind_run, (*change[1:], change.id)) for change in changes]
        )

    def update_task_statuses(self, conn: Connection, changes: Sequence[TaskStatusChange]) -> None:
        cursor(conn).executemany(
            _UPDATE_TASK_STATUS,
            [_apply(self.bind_task_status, (c.status, c.updated_at, c.task_id, c.run_id)) for c in changes],
        )


def cursor(conn: Connection) -> Any:
    """A DB-API cursor on `conn`'s connection, in its transaction."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    return dbapi.cursor()

"""The SQLite event batch's statements sent straight to the driver (`store/sqlite_direct.py`) store
and read exactly what SQLAlchemy Core's statements for the same columns store and read: the same
values written both ways, on two runs of two tasks, give the same stored text."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import bindparam, insert, select
from sqlalchemy.engine import Connection

from agentbus.common.db import sync_sqlite_engine
from agentbus.gateway.store.effects import RUN_COLUMNS, RUN_READ, EventRow, RunChange, TaskStatusChange
from agentbus.gateway.store.sqlite_direct import SqliteDirect
from agentbus.gateway.store.tables import run_events, runs, tasks
from tests.support.gateway_db import engine_with_a_run

AT = datetime(2026, 12, 7, 4, 5, 6, 789012, tzinfo=UTC)
# Core's forms of the same statements (what the batch ran before it went to the driver).
CORE_RUNS = select(*(runs.c[c] for c in RUN_READ)).where(runs.c.id.in_(bindparam("ids", expanding=True)))
CORE_UPDATE_RUN = (
    runs.update().where(runs.c.id == bindparam("b_id")).values({c: bindparam(f"b_{c}") for c in RUN_COLUMNS})
)
CORE_UPDATE_TASK = (
    tasks.update()
    .where(tasks.c.id == bindparam("b_task_id"), tasks.c.latest_run_id == bindparam("b_run_id"))
    .values(status=bindparam("b_status"), updated_at=bindparam("b_updated_at"))
)


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """A migrated SQLite file with tasks ta and tb, each with its latest run (ra and rb)."""
    path = tmp_path / "direct.db"
    engine = await engine_with_a_run(
        f"sqlite+aiosqlite:///{path}", AT, task={"id": "ta"}, run={"id": "ra", "task_id": "ta"}
    )
    async with engine.begin() as conn:
        task = (await conn.execute(select(tasks).where(tasks.c.id == "ta"))).mappings().one()
        await conn.execute(insert(tasks), {**task, "id": "tb"})
        run = (await conn.execute(select(runs).where(runs.c.id == "ra"))).mappings().one()
        await conn.execute(insert(runs), {**run, "id": "rb", "task_id": "tb"})
        await conn.execute(tasks.update().values(latest_run_id="ra").where(tasks.c.id == "ta"))
        await conn.execute(tasks.update().values(latest_run_id="rb").where(tasks.c.id == "tb"))
    await engine.dispose()
    return path


@pytest.fixture
def conn(db: Path) -> Iterator[Connection]:
    engine = sync_sqlite_engine(f"sqlite+aiosqlite:///{db}")
    assert engine is not None
    with engine.connect() as c:
        yield c
    engine.dispose()


def stored(db: Path, sql: str, *params: str) -> list[tuple]:
    """Rows as SQLite keeps them (text, numbers), read without SQLAlchemy."""
    with sqlite3.connect(db) as raw:
        return raw.execute(sql, params).fetchall()


def change(run_id: str) -> RunChange:
    return RunChange(
        id=run_id,
        status="awaiting_approval",
        plan={"steps": ["ünïcode ✓", {"nested": [1, 2.5, None, True]}], "empty": {}},
        progress=42.5,
        results=["a", {"b": None}],
        error_message="quote ' and \" and ü",
        started_at=AT,
        completed_at=None,
        duration=1.25,
        approval=None,
        approval_deadline=datetime(2026, 12, 7, 8, 0, tzinfo=timezone(timedelta(hours=2))),  # not UTC
        last_seq=3,
        updated_at=AT.replace(microsecond=0),
    )


def test_a_run_change_is_stored_as_core_stores_it(db: Path, conn: Connection) -> None:
    with conn.begin():
        SqliteDirect(conn.dialect).update_runs(conn, [change("ra")])
        conn.execute(CORE_UPDATE_RUN, [{f"b_{k}": v for k, v in change("rb")._asdict().items()}])
    columns = ", ".join(RUN_COLUMNS)
    a, b = (stored(db, f"SELECT {columns} FROM runs WHERE id = ?", r)[0] for r in ("ra", "rb"))
    assert a == b
    assert a[RUN_COLUMNS.index("approval")] is None  # SQL NULL, as Core stores None in these columns
    assert a[RUN_COLUMNS.index("approval_deadline")] == "2026-12-07 06:00:00.000000"  # in UTC


def test_runs_are_read_as_core_reads_them(conn: Connection) -> None:
    with conn.begin():
        direct = SqliteDirect(conn.dialect)
        direct.update_runs(conn, [change("ra")])
        read = direct.runs(conn, ["ra", "missing", "rb"])
        core = {r.id: r._asdict() for r in conn.execute(CORE_RUNS, {"ids": ["ra", "missing", "rb"]})}
    assert read == core
    assert set(read) == {"ra", "rb"}
    assert read["ra"]["plan"] == change("ra").plan
    assert read["ra"]["approval_deadline"] == datetime(2026, 12, 7, 6, 0, tzinfo=UTC)


def test_events_are_inserted_as_core_inserts_them_and_a_stored_seq_is_left(
    db: Path, conn: Connection
) -> None:
    def rows(run_id: str, seqs: range) -> list[EventRow]:
        return [
            EventRow(run_id, "ta", seq, "progress", AT + timedelta(seconds=seq), f'{{"seq":{seq},"m":"ü"}}')
            for seq in seqs
        ]

    with conn.begin():
        direct = SqliteDirect(conn.dialect)
        assert direct.insert_events(conn, rows("ra", range(1, 4))) == {("ra", 1), ("ra", 2), ("ra", 3)}
        conn.execute(insert(run_events), [r._asdict() for r in rows("rb", range(1, 4))])
        # A redelivered seq is left as it was stored; only the new one is inserted.
        again = [r._replace(payload="other") for r in rows("ra", range(3, 5))]
        assert direct.insert_events(conn, again) == {("ra", 4)}
    query = (
        "SELECT task_id, seq, event_type, timestamp, payload FROM run_events WHERE run_id = ? ORDER BY seq"
    )
    assert stored(db, query, "ra")[:3] == stored(db, query, "rb")
    assert stored(db, query, "ra")[2][4] == '{"seq":3,"m":"ü"}'
    assert stored(db, query, "ra")[3][4] == "other"


def test_a_task_status_is_stored_as_core_stores_it_for_its_latest_run_only(
    db: Path, conn: Connection
) -> None:
    later = AT + timedelta(minutes=1)
    with conn.begin():
        direct = SqliteDirect(conn.dialect)
        direct.update_task_statuses(conn, [TaskStatusChange("ta", "ra", "completed", later)])
        conn.execute(
            CORE_UPDATE_TASK,
            [{"b_task_id": "tb", "b_run_id": "rb", "b_status": "completed", "b_updated_at": later}],
        )
        # Not the task's latest run: its task is left as it is.
        direct.update_task_statuses(
            conn, [TaskStatusChange("tb", "ra", "failed", later + timedelta(hours=1))]
        )
    query = "SELECT status, updated_at FROM tasks WHERE id = ?"
    assert stored(db, query, "ta") == stored(db, query, "tb") == [("completed", "2026-12-07 04:06:06.789012")]

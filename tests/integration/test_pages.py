"""Pages: cursors walk the same order as `skip`, totals stay exact through inserts, status changes
and deletes (kept by triggers), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import delete, func, select, text, update

from agentbus.contracts import encode
from agentbus.contracts import events as ev
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.lists import count_name
from agentbus.gateway.store.tables import row_counts, runs, tasks
from bench.seed import PG_TASKS
from tests.support.gateway_db import engine_with_a_run
from tests.support.waiting import eventually


async def walk(client: AsyncTestClient, path: str, limit: int) -> tuple[list[str], list[int]]:
    """Every item's id, following next_cursor from the first page; and each page's total."""
    ids: list[str] = []
    totals: list[int] = []
    sep = "&" if "?" in path else "?"
    url = f"{path}{sep}limit={limit}"
    while True:
        r = await client.get(url)
        assert r.status_code == 200, r.text
        page = r.json()
        ids += [item["id"] for item in page["items"]]
        totals.append(page["total"])
        if page["next_cursor"] is None:
            return ids, totals
        assert len(page["items"]) == limit
        url = f"{path}{sep}limit={limit}&cursor={page['next_cursor']}"


async def test_cursor_pages_follow_the_skip_order_with_exact_totals(client: AsyncTestClient) -> None:
    created = [(await client.post("/api/tasks", json={"name": f"t{i}"})).json()["id"] for i in range(23)]
    by_skip = []
    for skip in range(0, 30, 10):
        by_skip += [t["id"] for t in (await client.get(f"/api/tasks?skip={skip}&limit=10")).json()["items"]]
    ids, totals = await walk(client, "/api/tasks", 5)
    assert ids == by_skip and sorted(ids) == sorted(created)  # the same order, each once
    assert totals == [23] * 5
    last = (await client.get("/api/tasks?skip=20&limit=10")).json()
    assert len(last["items"]) == 3 and last["next_cursor"] is None

    one, other = created[0], created[1]
    for _ in range(3):
        assert (await client.post("/api/runs", json={"task_id": one})).status_code == 201
    assert (await client.post("/api/runs", json={"task_id": other})).status_code == 201
    ids, totals = await walk(client, f"/api/runs?task_id={one}", 2)
    assert len(ids) == 3 and totals == [3, 3]
    assert (await client.get(f"/api/runs?task_id={one}&status=pending")).json()["total"] == 3
    assert (await client.get("/api/runs?status=pending")).json()["total"] == 4
    assert (await client.get("/api/runs?status=completed")).json()["total"] == 0
    assert (await client.get("/api/tasks?status=pending")).json()["total"] == 23

    assert (await client.delete(f"/api/tasks/{one}")).status_code == 204
    assert (await client.get("/api/runs")).json()["total"] == 1
    assert (await client.get(f"/api/runs?task_id={one}")).json()["total"] == 0
    assert (await client.get("/api/tasks")).json()["total"] == 22


async def test_a_cursor_is_checked(client: AsyncTestClient) -> None:
    await client.post("/api/tasks", json={"name": "a"})
    await client.post("/api/tasks", json={"name": "b"})
    cursor = (await client.get("/api/tasks?limit=1")).json()["next_cursor"]
    assert cursor
    for bad in ("not-a-cursor", "W10", cursor[:-3] + "xyz", "x" * 201):
        r = await client.get(f"/api/tasks?cursor={bad}")
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["detail"]
    r = await client.get(f"/api/runs?skip=1&cursor={cursor}")
    assert r.status_code == 400 and "either" in r.json()["detail"]


async def _counts(conn: Any) -> dict[str, int]:
    """Every count: row_counts plus, on PostgreSQL, the deltas not folded into it yet."""
    rows = await conn.execute(select(row_counts.c.name, func.sum(row_counts.c.n)).group_by(row_counts.c.name))
    out = {name: int(n) for name, n in rows}
    if conn.dialect.name == "postgresql":
        for name, n in await conn.execute(text("SELECT name, sum(n) FROM row_count_deltas GROUP BY name")):
            out[name] = out.get(name, 0) + int(n)
    return out


async def _expected(conn: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for table, keys in ((tasks, ()), (runs, ("task_id",))):
        for group in ((), ("status",), *((k,) for k in keys), (*keys, "status")):
            columns = [table.c[c] for c in group]
            query = select(*columns, func.count()).select_from(table).group_by(*columns)
            for row in await conn.execute(query):
                labels = {"task" if c == "task_id" else c: v for c, v in zip(group, row[:-1], strict=True)}
                out[count_name(table.name, labels)] = int(row[-1])
    return out


async def test_counts_follow_every_change_of_the_rows(database_url: str) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    engine = await engine_with_a_run(database_url, at)  # migrated: task t, run r (running)
    try:
        async with engine.begin() as conn:
            assert await _counts(conn) == {k: v for k, v in (await _expected(conn)).items() if v}
            for i in range(4):
                await conn.execute(
                    runs.insert().values(
                        id=f"r{i}",
                        task_id="t",
                        run_number=i + 2,
                        status="pending",
                        agent="scripted",
                        require_approval=False,
                        created_at=at,
                        updated_at=at,
                    )
                )
            await conn.execute(update(runs).where(runs.c.id.in_(["r0", "r1"])).values(status="completed"))
            await conn.execute(update(runs).where(runs.c.id == "r2").values(progress=50.0))  # status kept
            await conn.execute(update(tasks).values(status="completed"))
            await conn.execute(delete(runs).where(runs.c.id == "r3"))
        async with engine.connect() as conn:
            counts = {k: v for k, v in (await _counts(conn)).items() if v}
            assert counts == await _expected(conn)
            assert counts["runs|task=t|status=completed"] == 2 and counts["runs"] == 4
        async with engine.begin() as conn:
            await conn.execute(delete(tasks))  # its runs go with it (cascade)
        store = GatewayStore(database_url)
        try:
            if engine.dialect.name == "postgresql":
                assert await store.fold_counts()
                async with engine.connect() as conn:
                    assert (await conn.execute(text("SELECT count(*) FROM row_count_deltas"))).scalar() == 0
            async with engine.connect() as conn:
                left = await _counts(conn)
                assert not any(name.startswith("runs|task=") for name in left)  # no rows left behind
                assert all(n == 0 for n in left.values())
            page = await store.list_runs(None, None, 0, 10)
            assert page.total == 0 and page.rows == [] and page.next_cursor is None
        finally:
            await store.close()
    finally:
        await engine.dispose()


def _run_values(task_id: str, at: datetime) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "task_id": task_id,
        "status": "pending",
        "agent": "scripted",
        "require_approval": False,
        "max_revision_rounds": 2,
        "agent_config": {},
        "progress": 0.0,
        "labels": {},
        "last_seq": 0,
        "created_at": at,
        "updated_at": at,
    }


def _events(run: Any, kinds: list[type[ev.Event]]) -> list[tuple[ev.Event, bytes]]:
    out = []
    for seq, cls in enumerate(kinds, 1):
        data = {"data": ev.CompletionData(results={}, duration=0.1)} if cls is ev.Completion else {}
        e = cls(
            id=uuid.uuid4().hex,
            seq=seq,
            timestamp=datetime.now(UTC),
            task_id=run.task_id,
            run_id=run.id,
            **data,
        )
        out.append((e, encode(e)))
    return out


async def test_counts_stay_exact_under_concurrent_writes(database_url: str) -> None:
    """Event batches moving runs through their statuses while new runs are created, all at once:
    every count still equals the rows (on PostgreSQL: no deadlock on the shared counts either)."""
    at = datetime.now(UTC)
    engine = await engine_with_a_run(database_url, at)
    await engine.dispose()
    store = GatewayStore(database_url)
    try:
        await store.create_task(
            {
                "id": "u",
                "name": "u",
                "agent": "scripted",
                "require_approval": False,
                "approval_timeout_s": 60,
                "timeout_s": 60,
                "max_rounds": 1,
                "status": "pending",
                "next_run_number": 0,
                "created_at": at,
                "updated_at": at,
            }
        )
        first = [await store.create_run(_run_values("u", datetime.now(UTC))) for _ in range(30)]

        async def finish(runs_: list[Any]) -> None:
            batch = [e for r in runs_ for e in _events(r, [ev.AnalysisStart, ev.Completion])]
            await store.store_events(batch)

        writes = [finish(first[i : i + 5]) for i in range(0, 30, 5)]
        writes += [store.create_run(_run_values("u", datetime.now(UTC))) for _ in range(30)]
        await asyncio.gather(*writes)
        if store.dialect == "postgresql":
            assert await store.fold_counts()
        async with store.engine.connect() as conn:
            assert {k: v for k, v in (await _counts(conn)).items() if v} == await _expected(conn)
        assert (await store.list_runs("u", "completed", 0, 10)).total == 30
        assert (await store.list_runs(None, "pending", 0, 10)).total == 30
    finally:
        await store.close()


async def test_every_page_is_read_in_index_order_on_sqlite(tmp_path: Any) -> None:
    """SQLite reads each list and filter's page straight off an index, without sorting its rows in
    a temporary B-tree (the indexes end with `id`, the order's tie-breaker: migration 0008)."""
    engine = await engine_with_a_run(f"sqlite+aiosqlite:///{tmp_path / 'plans.db'}", datetime.now(UTC))
    store = GatewayStore(str(engine.url))
    try:
        combos = [((), False, 11, False), (("status",), False, 11, True), ((), True, 101, False)]
        combos += [(("status",), True, 2, True)]
        run_combos = [*combos, (("task_id",), False, 11, False), (("task_id", "status"), True, 11, True)]
        queries = [store._task_lists.query(*c) for c in combos]
        queries += [store._run_lists.query(*c) for c in run_combos]
        async with engine.connect() as conn:
            for query in queries:
                binds = ["x"] * query.sql.count("?")
                plan = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + query.sql, tuple(binds))).all()
                steps = [row[-1] for row in plan]
                assert any("USING INDEX" in step for step in steps), (query.name, steps)
                assert not any("TEMP B-TREE" in step for step in steps), (query.name, steps)
    finally:
        await engine.dispose()


async def test_a_page_shows_each_row_as_a_read_of_it_does(database_url: str) -> None:
    """Pages send their rows' JSON columns on as stored; the answer must be the one GET gives."""
    from agentbus.gateway.convert import run_out, task_out

    at = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)  # no microseconds: the shortest form
    engine = await engine_with_a_run(database_url, at)  # migrated: task t, run r (running)
    await engine.dispose()
    store = GatewayStore(database_url)
    try:
        rich = {"nested": {"list": [1, 2.5, None, True], "é": "ünï ✓"}, "big": 10**15, "f": 0.1}
        async with store.engine.begin() as conn:
            await conn.execute(
                update(tasks).values(config=rich, agent_config=None, approvers=["admin", "jwt:a b"])
            )
            await conn.execute(
                update(runs).values(
                    plan={"steps": [{"n": 1, "text": 'é\n"q"'}]},
                    results=[1, "two", {"3": None}],
                    labels={"team": "ops"},
                    approval={"approved": True, "decided_at": "2026-01-01T12:00:01.5Z", "feedback": "ok"},
                    progress=33.3,
                    duration=1.0 / 3,
                )
            )
            values = _run_values("t", datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))
            await conn.execute(runs.insert().values(**values, run_number=2, plan=None, results=None))

        def shown(item: Any) -> Any:
            return msgspec.json.decode(msgspec.json.encode(item))

        (task_row,) = (await store.list_tasks(None, 0, 10)).rows
        assert shown(task_out(task_row)) == shown(task_out(await store.task("t")))
        assert shown(task_out(task_row))["config"] == rich
        assert shown(task_out(task_row))["agent_config"] == {}
        run_rows = (await store.list_runs("t", None, 0, 10)).rows
        assert [r.id for r in run_rows] == [values["id"], "r"]
        for row in run_rows:
            assert shown(run_out(row)) == shown(run_out(await store.run(row.id)))
        assert shown(run_out(run_rows[1]))["results"] == [1, "two", {"3": None}]
        assert shown(run_out(run_rows[0]))["plan"] is None
    finally:
        await store.close()


async def test_the_fold_vacuums_the_deltas_it_folded(database_url: str) -> None:
    """PostgreSQL: folded count deltas are dead index entries that every read of their count walks
    (20,000 of them made a read seven times slower), so the fold vacuums them once there are enough,
    and the totals stay exact through it."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite keeps its counts in place: no deltas to fold")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    engine = await engine_with_a_run(database_url, at)
    store = GatewayStore(database_url)
    try:

        async def vacuumed() -> Any:
            async with engine.connect() as conn:
                return (
                    await conn.execute(
                        text("SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'row_count_deltas'")
                    )
                ).scalar()

        assert await vacuumed() is None
        async with engine.begin() as conn:  # each run appends a delta to four counts
            await conn.execute(
                runs.insert(), [_run_values("t", at) | {"run_number": i + 2} for i in range(600)]
            )
        assert await store.fold_counts()
        await eventually(vacuumed, what="a vacuum of row_count_deltas after folding 2,400 deltas")
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM row_count_deltas"))).scalar() == 0
        assert (await store.list_runs("t", None, 0, 10)).total == 601
    finally:
        await store.close()
        await engine.dispose()


async def test_a_page_keeps_one_plan_on_postgresql(database_url: str) -> None:
    """PostgreSQL plans a prepared statement again for each execution's values until one plan for
    any value looks as cheap, and it costs a `LIMIT $n` as a tenth of the table: a page was planned
    on every request, which cost more than reading it (at a million rows). With the page's size
    written into its statement, each page's statement (and a log's) runs on one kept (generic) plan."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite's statements are compiled once and never planned again")
    engine = await engine_with_a_run(database_url, datetime(2026, 1, 1, tzinfo=UTC))
    async with engine.begin() as conn:
        await conn.exec_driver_sql(PG_TASKS, (20000,))  # the lists benchmark's own seed
        await conn.exec_driver_sql("ANALYZE tasks")
    await engine.dispose()
    store = GatewayStore(database_url)
    try:
        assert store.reader.pg is not None
        for _ in range(10):  # one at a time: the reader uses the same connection each time
            page = await store.list_tasks(None, 0, 10)
            assert len(page.rows) == 10 and page.total == 20001
            page = await store.list_tasks("failed", 0, 10, page.next_cursor)
            assert len(page.rows) == 10 and page.total == 2000
            assert await store.logs("r", 0, 100) == ([], 0)
        async with store.reader.pg.connection() as conn:
            plans = await conn.fetch(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE '%ORDER BY%' AND statement NOT LIKE '%pg_prepared%'"
            )
        assert len(plans) == 3, plans  # the two pages and the log
        for plan in plans:
            assert plan["generic_plans"] >= 4, dict(plan)
    finally:
        await store.close()

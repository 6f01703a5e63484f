"""The audit insert's SQLite fast path stores exactly what SQLAlchemy's insert stores."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text

from agentbus.common.db import sync_sqlite_engine
from agentbus.gateway.store.people import AUDIT_INSERT, AuditEntry, audit_row, write_audit
from agentbus.gateway.store.tables import audit_log
from tests.support.gateway_db import engine_with_a_run


async def test_an_entry_written_either_way_is_stored_the_same(database_url: str) -> None:
    engine = await engine_with_a_run(database_url, datetime.now(UTC))
    try:
        entries = [
            AuditEntry(
                datetime(2026, 12, 6, 22, 15, 0, tzinfo=UTC),  # whole seconds: no fraction lost
                {"id": "k1", "name": "ci key", "role": "operator"},
                "task.update",
                "task",
                "t",
                {"fields": ["name"], "nested": {"n": 1.5, "none": None}, "text": "é\u2028"},
            ),
            AuditEntry(
                datetime(2026, 12, 6, 22, 15, 0, 123456, tzinfo=UTC),
                {"id": "admin", "name": "admin"},  # no role
                "auth.denied",
                None,
                None,
                None,
            ),
        ]

        def write(conn: Any) -> None:
            for i, entry in enumerate(entries):
                conn.execute(AUDIT_INSERT, {**audit_row(entry), "target_id": f"sa-{i}"})
                write_audit(conn, entry._replace(target_id=f"fast-{i}"))

        # The writer's connection: on a SQLite file a plain sqlite3 one (the fast path), else async.
        sync = sync_sqlite_engine(engine.url)
        if sync is not None:
            with sync.begin() as conn:
                write(conn)
            sync.dispose()
        else:
            async with engine.begin() as conn:
                await conn.run_sync(write)
        async with engine.connect() as conn:
            raw = (await conn.execute(text("SELECT target_id, at, detail FROM audit_log"))).all()
            typed = (await conn.execute(select(audit_log))).mappings().all()
        stored = {r.target_id: (r.at, r.detail) for r in raw}
        for i in range(len(entries)):
            assert stored[f"fast-{i}"] == stored[f"sa-{i}"]  # the same text in the database
        read = {r["target_id"]: r for r in typed}
        for i, entry in enumerate(entries):
            row = read[f"fast-{i}"]
            assert row["at"] == entry.at and row["detail"] == entry.detail
            assert (row["actor_id"], row["actor_name"], row["actor_role"]) == (
                entry.actor["id"],
                entry.actor["name"],
                entry.actor.get("role"),
            )
            assert (row["action"], row["target_type"]) == (entry.action, entry.target_type)
    finally:
        await engine.dispose()

"""API keys and the audit trail: their SQL, for `GatewayStore`.

An audit entry is written by `write_audit(conn, entry)` (or, on an async connection, `AUDIT_INSERT`
with `audit_row(entry)`), executed inside the transaction of
the change it records (the store's write methods take an `audit=`); the trail is append-only: no
statement here updates or deletes an entry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.gateway.store.lists import BadCursor, Page, Position, decode_cursor, encode_cursor
from agentbus.gateway.store.sqlite_direct import processors
from agentbus.gateway.store.tables import api_keys, audit_log


class AuditEntry(NamedTuple):
    at: datetime
    actor: dict[str, Any]  # {id, name, role}
    action: str
    target_type: str | None
    target_id: str | None
    detail: dict[str, Any] | None = None


# Built once: an entry is its parameters (building a statement per entry cost more than the insert).
AUDIT_INSERT = audit_log.insert()


_SQLITE_AUDIT_INSERT = (
    "INSERT INTO audit_log (at, actor_id, actor_name, actor_role, action, target_type, target_id, "
    "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


@functools.lru_cache(maxsize=4)
def _sqlite_binds(dialect: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """How SQLAlchemy binds the time and the detail on this dialect (the same stored text)."""
    at, detail = processors(audit_log, ("at", "detail"), dialect)
    assert at is not None and detail is not None
    return at, detail


def write_audit(conn: Connection, entry: AuditEntry) -> None:
    """Write the entry in `conn`'s transaction (a writer unit's). On SQLite straight through the
    driver on the same connection: SQLAlchemy's execution of the insert cost three times the insert
    itself, on the one writer thread every change goes through."""
    if conn.dialect.driver != "pysqlite":  # PostgreSQL, or aiosqlite under run_sync
        conn.execute(AUDIT_INSERT, audit_row(entry))
        return
    at, detail = _sqlite_binds(conn.dialect)
    actor = entry.actor
    conn.connection.driver_connection.execute(
        _SQLITE_AUDIT_INSERT,
        (
            at(entry.at),
            actor["id"],
            actor["name"],
            actor.get("role"),
            entry.action,
            entry.target_type,
            entry.target_id,
            detail(entry.detail),
        ),
    )


def audit_row(entry: AuditEntry) -> dict[str, Any]:
    """The parameters of `AUDIT_INSERT` for an entry."""
    return {
        "at": entry.at,
        "actor_id": entry.actor["id"],
        "actor_name": entry.actor["name"],
        "actor_role": entry.actor.get("role"),
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "detail": entry.detail,
    }


_KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.role,
    api_keys.c.created_by,
    api_keys.c.created_at,
    api_keys.c.expires_at,
    api_keys.c.revoked_at,
)


class People:
    def __init__(self, engine: AsyncEngine, writer: Any) -> None:
        self.engine = engine
        self.writer = writer

    # --- keys ----------------------------------------------------------------------------------

    async def create_key(self, values: dict[str, Any], audit: AuditEntry) -> Any:
        def store(conn: Any) -> Any:
            row = conn.execute(api_keys.insert().values(**values).returning(*_KEY_COLUMNS)).one()
            write_audit(conn, audit)
            return row

        return await self.writer(store)

    async def revoke_key(self, key_id: str, at: datetime, audit: AuditEntry) -> bool:
        """Revoke a live key; False when there is no such key (or it was revoked already)."""
        stmt = (
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )

        def store(conn: Any) -> bool:
            if not conn.execute(stmt).rowcount:
                return False
            write_audit(conn, audit)
            return True

        return bool(await self.writer(store))

    async def keys(self, skip: int, limit: int, cursor: str | None, revoked: bool) -> Page:
        """Keys newest first (revoked ones only when asked)."""
        where = [] if revoked else [api_keys.c.revoked_at.is_(None)]
        return await self._page(api_keys, _KEY_COLUMNS, api_keys.c.created_at, where, skip, limit, cursor)

    # --- audit ---------------------------------------------------------------------------------

    async def audit(self, entry: AuditEntry) -> None:
        """An entry in a transaction of its own: about no change (a denied request), or about one
        stored outside this database (a cancel in the broker, a metric by the metrics service),
        written once that change is stored (`people.audit_after`)."""
        await self.writer(lambda conn: write_audit(conn, entry))

    async def audit_page(
        self,
        filters: dict[str, Any],
        since: datetime | None,
        until: datetime | None,
        skip: int,
        limit: int,
        cursor: str | None,
    ) -> Page:
        """Entries newest first; `filters` keys: actor, action, target_id."""
        where = []
        if filters.get("actor"):
            where.append(audit_log.c.actor_id == filters["actor"])
        if filters.get("action"):
            where.append(audit_log.c.action == filters["action"])
        if filters.get("target_id"):
            where.append(audit_log.c.target_id == filters["target_id"])
        if since is not None:
            where.append(audit_log.c.at >= since)
        if until is not None:
            where.append(audit_log.c.at < until)
        return await self._page(audit_log, tuple(audit_log.c), audit_log.c.at, where, skip, limit, cursor)

    async def _page(
        self, table: Any, columns: Any, at: Any, where: list[Any], skip: int, limit: int, cursor: str | None
    ) -> Page:
        """Newest first by (at, id); `cursor` continues after the last row of the previous page."""
        page_where = list(where)
        if cursor is not None:
            after = decode_cursor(cursor)
            after_id: Any = after.id
            if table is audit_log:
                if not after.id.isdigit() or len(after.id) > 18:
                    raise BadCursor("cursor is not one this gateway handed out (use a page's next_cursor)")
                after_id = int(after.id)
            page_where.append(or_(at < after.created_at, and_(at == after.created_at, table.c.id < after_id)))
        query = (
            select(*columns)
            .where(*page_where)
            .order_by(at.desc(), table.c.id.desc())
            .offset(skip)
            .limit(limit + 1)
        )
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(query))
            total = (await conn.execute(select(func.count()).select_from(table).where(*where))).scalar()
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = None
        if more:
            last = rows[-1]
            nxt = encode_cursor(Position(getattr(last, "created_at", None) or last.at, str(last.id)))
        return Page(rows, int(total or 0), nxt)

"""The approvals inbox: its SQL, for `GatewayStore` (rows are written by the event batch,
`events.py`, and by a person's decision, `settle_by_person`).

A page is ordered by (`requested_at`, `id`): oldest first for `status=pending` (the queue to work
through), newest first otherwise. A cursor names the last row of the page before; the next page
starts right after it through an index (`ix_approvals_status` or `ix_approvals_task`), at the same
cost at any depth. With no filter at all there is no index on `requested_at` alone: the page is
merged from one index range per status (each read only as far as the page needs). `total` is a
count with the page's filters: the inbox is not a hot path.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.gateway.store.approval_effects import decided_status
from agentbus.gateway.store.lists import Page, Position, decode_cursor, encode_cursor
from agentbus.gateway.store.reads import RowReader
from agentbus.gateway.store.tables import approvals

STATUSES = ("pending", "approved", "rejected", "revise_requested", "expired", "cancelled")


def settle_by_person(conn: Connection, run_id: str, approval: dict[str, Any], at: datetime) -> None:
    """Record a person's decision on the run's pending request (in the decision's transaction)."""
    conn.execute(
        approvals.update()
        .where(approvals.c.run_id == run_id, approvals.c.status == "pending")
        .values(
            status=decided_status(approval),
            decided_at=at,
            feedback=approval.get("feedback"),
            decided_by=approval.get("decided_by"),
        )
    )


class Approvals:
    def __init__(self, engine: AsyncEngine, reader: RowReader) -> None:
        self.engine = engine
        self.reader = reader

    async def one(self, approval_id: str) -> Any:
        """The request's row, or None (the primary-key fast path, `reads.py`)."""
        return await self.reader.one(approvals, approval_id)

    async def page(
        self, status: str | None, task_id: str | None, skip: int, limit: int, cursor: str | None
    ) -> Page:
        """`pending` ones oldest first, the others newest first; raises BadCursor for a cursor
        this store did not hand out."""
        after = decode_cursor(cursor) if cursor is not None else None
        oldest_first = status == "pending"
        where = [approvals.c.task_id == task_id] if task_id else []
        if status or task_id:
            query = _ordered(_range(status, where, after, oldest_first), oldest_first)
        else:  # one index range per status, merged (see the module's docstring)
            reach = min(skip + limit + 1, 2**63 - 1)  # a database integer: skip may be the largest
            parts = [
                select(_ordered(_range(s, where, after, False), False).limit(reach).subquery())
                for s in STATUSES
            ]
            merged = union_all(*parts).subquery()
            query = select(merged).order_by(merged.c.requested_at.desc(), merged.c.id.desc())
        counted = where + ([approvals.c.status == status] if status else [])
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(query.offset(skip).limit(limit + 1)))
            total = (await conn.execute(select(func.count()).select_from(approvals).where(*counted))).scalar()
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(
            rows,
            int(total or 0),
            encode_cursor(Position(rows[-1].requested_at, rows[-1].id)) if more else None,
        )


def _range(status: str | None, where: list[Any], after: Position | None, oldest_first: bool) -> Select[Any]:
    """The rows of one status (or of any) under `where`, past `after` in the page's order."""
    c = approvals.c
    conditions = [*where, c.status == status] if status else list(where)
    if after is not None:
        at, key = after.created_at, after.id
        # The first conjunct is an index range; the second settles rows of the same instant.
        if oldest_first:
            conditions.append(and_(c.requested_at >= at, or_(c.requested_at > at, c.id > key)))
        else:
            conditions.append(and_(c.requested_at <= at, or_(c.requested_at < at, c.id < key)))
    return select(approvals).where(*conditions)


def _ordered(query: Select[Any], oldest_first: bool) -> Select[Any]:
    c = approvals.c
    if oldest_first:
        return query.order_by(c.requested_at.asc(), c.id.asc())
    return query.order_by(c.requested_at.desc(), c.id.desc())

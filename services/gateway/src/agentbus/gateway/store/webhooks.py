"""Webhooks and their deliveries: their SQL, for `GatewayStore` (`store.webhooks`).

- A delivery row is made in the transaction that stores its event (`store/events.py` calls
  `delivery_rows` with the webhooks read in that transaction), unique per (webhook, run, seq): an
  event is stored once across gateway copies, and a redelivered one is not new, so each delivery is
  made once, and a crash after the commit loses none.
- `claim` hands due deliveries to one gateway copy for a short while (`claimed_until`): an UPDATE of
  rows picked `FOR UPDATE SKIP LOCKED` on PostgreSQL (copies never wait for each other nor take the
  same row), under SQLite's one write lock there. A copy that dies mid-send leaves its claim to lapse,
  and the delivery is sent again (at least once).
- `settle` writes an attempt's outcome: delivered, due again later, or failed for good.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import msgspec
from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.gateway.store.effects import Batch
from agentbus.gateway.store.lists import Page, Position, decode_cursor, encode_cursor
from agentbus.gateway.store.people import AuditEntry, write_audit
from agentbus.gateway.store.sqlite_direct import cursor
from agentbus.gateway.store.tables import webhook_deliveries, webhooks

ALL = "*"
# What answers show of a webhook: never its secret.
WEBHOOK_COLUMNS = (
    webhooks.c.id,
    webhooks.c.url,
    webhooks.c.events,
    webhooks.c.created_by,
    webhooks.c.created_at,
)
DELIVERY_COLUMNS = tuple(c for c in webhook_deliveries.c if c.name not in ("payload", "claimed_until"))
# Read in the event batch's transaction: which webhooks want which event types.
SUBSCRIBERS = "SELECT id, events FROM webhooks"
# PostgreSQL: the same as one JSON text, [[id, events], ...], read inside the event insert.
SUBSCRIBERS_JSON = "SELECT coalesce(json_agg(json_build_array(id, events)), '[]')::text FROM webhooks"
PG_INSERT_DELIVERIES = (
    "INSERT INTO webhook_deliveries (id, webhook_id, event_type, run_id, task_id, seq, payload, status, "
    "attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8) "
    "ON CONFLICT (webhook_id, run_id, seq) DO NOTHING"
)
SQLITE_INSERT_DELIVERIES = sqlite_insert(webhook_deliveries).on_conflict_do_nothing(
    index_elements=["webhook_id", "run_id", "seq"]
)


class DeliveryRow(NamedTuple):
    id: str
    webhook_id: str
    event_type: str
    run_id: str
    task_id: str
    seq: int
    payload: str
    created_at: datetime


class Claimed(NamedTuple):
    """A delivery to send now, with what it is sent with."""

    id: str
    webhook_id: str
    event_type: str
    payload: str
    attempts: int
    url: str
    secret: str


def delivery_rows(subscribers: list[tuple[str, Any]], stored: Batch, now: datetime) -> list[DeliveryRow]:
    """The deliveries of newly stored events: one per (webhook asking for its type, event)."""
    if not subscribers or not stored:
        return []
    wants: list[tuple[str, frozenset[str]]] = []
    for webhook_id, events in subscribers:
        if isinstance(events, str):  # raw asyncpg hands jsonb over as its text
            events = msgspec.json.decode(events)
        wants.append((webhook_id, frozenset(events)))
    out = []
    for event, raw in stored:
        kind = event.__struct_config__.tag
        for webhook_id, types in wants:
            if kind in types or ALL in types:
                # Derived, not random: the same (webhook, event) always names the same delivery.
                delivery_id = _delivery_id(webhook_id, event.run_id, event.seq)
                out.append(
                    DeliveryRow(
                        delivery_id,
                        webhook_id,
                        kind,
                        event.run_id,
                        event.task_id,
                        event.seq,
                        raw.decode(),
                        now,
                    )
                )
    return out


def _delivery_id(webhook_id: str, run_id: str, seq: int) -> str:
    return hashlib.sha256(f"{webhook_id}:{run_id}:{seq}".encode()).hexdigest()[:32]


def sqlite_deliveries(conn: Connection, stored: Batch, now: datetime) -> int:
    """In the SQLite event batch's transaction: make its deliveries; how many."""
    # Straight to the driver, not a Core select: this runs in every event batch, and building,
    # compiling and executing the statement cost more than the query on the usually empty table.
    reading = cursor(conn)
    reading.execute(SUBSCRIBERS)
    rows = reading.fetchall()
    subscribers = [(id_, msgspec.json.decode(events)) for id_, events in rows]
    rows = delivery_rows(subscribers, stored, now)
    if rows:
        conn.execute(
            SQLITE_INSERT_DELIVERIES,
            [{**r._asdict(), "status": "pending", "attempts": 0, "next_attempt_at": now} for r in rows],
        )
    return len(rows)


async def pg_deliveries(db: Any, subscribers: list[Any], stored: Batch, now: datetime) -> int:
    """In the PostgreSQL event batch's transaction (raw asyncpg): make its deliveries; how many.
    `subscribers`: [id, events] of each webhook, as `SUBSCRIBERS_JSON` read them."""
    rows = delivery_rows([(id_, events) for id_, events in subscribers], stored, now)
    if rows:
        await db.executemany(PG_INSERT_DELIVERIES, [tuple(r) for r in rows])
    return len(rows)


class Webhooks:
    def __init__(self, engine: AsyncEngine, writer: Any) -> None:
        self.engine = engine
        self.writer = writer
        self.postgres = engine.dialect.name == "postgresql"

    async def create(self, values: dict[str, Any], audit: AuditEntry) -> Any:
        stmt = webhooks.insert().values(**values).returning(*WEBHOOK_COLUMNS)

        def store(conn: Connection) -> Any:
            row = conn.execute(stmt).one()
            write_audit(conn, audit)
            return row

        return await self.writer(store)

    async def get(self, webhook_id: str) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(*WEBHOOK_COLUMNS).where(webhooks.c.id == webhook_id))).first()

    async def delete(self, webhook_id: str, audit: AuditEntry) -> bool:
        """Delete a webhook with its deliveries (pending ones are not sent); False when unknown."""
        deliveries = webhook_deliveries.delete().where(webhook_deliveries.c.webhook_id == webhook_id)
        stmt = webhooks.delete().where(webhooks.c.id == webhook_id)

        def store(conn: Connection) -> bool:
            conn.execute(deliveries)
            if not conn.execute(stmt).rowcount:
                return False
            write_audit(conn, audit)
            return True

        return bool(await self.writer(store))

    async def page(self, skip: int, limit: int, cursor: str | None) -> Page:
        return await self._page(webhooks, WEBHOOK_COLUMNS, [], skip, limit, cursor)

    async def deliveries(
        self, webhook_id: str, status: str | None, skip: int, limit: int, cursor: str | None
    ) -> Page:
        where = [webhook_deliveries.c.webhook_id == webhook_id]
        if status is not None:
            where.append(webhook_deliveries.c.status == status)
        return await self._page(webhook_deliveries, DELIVERY_COLUMNS, where, skip, limit, cursor)

    async def _page(
        self, table: Any, columns: Any, where: list[Any], skip: int, limit: int, cursor: str | None
    ) -> Page:
        """Newest first by (created_at, id); `cursor` continues after the previous page's last row."""
        at = table.c.created_at
        page_where = list(where)
        if cursor is not None:
            after = decode_cursor(cursor)
            page_where.append(or_(at < after.created_at, and_(at == after.created_at, table.c.id < after.id)))
        query = select(*columns).where(*page_where).order_by(at.desc(), table.c.id.desc())
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(query.offset(skip).limit(limit + 1)))
            total = (await conn.execute(select(func.count()).select_from(table).where(*where))).scalar()
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = encode_cursor(Position(rows[-1].created_at, rows[-1].id)) if more else None
        return Page(rows, int(total or 0), nxt)

    # --- the delivery loop ---------------------------------------------------------------------

    async def claim(self, now: datetime, hold_s: float, limit: int) -> list[Claimed]:
        """Due deliveries, claimed by this copy until `now + hold_s` (no other copy takes them)."""
        d = webhook_deliveries
        due = (
            select(d.c.id)
            .where(
                d.c.status == "pending",
                d.c.next_attempt_at <= bindparam("b_now", type_=d.c.next_attempt_at.type),
                or_(d.c.claimed_until.is_(None), d.c.claimed_until <= bindparam("b_now")),
            )
            .order_by(d.c.next_attempt_at)
            .limit(limit)
        )
        if self.postgres:
            due = due.with_for_update(skip_locked=True)
        stmt = d.update().where(d.c.id.in_(due.scalar_subquery())).values(claimed_until=bindparam("b_until"))
        read = (
            select(
                d.c.id,
                d.c.webhook_id,
                d.c.event_type,
                d.c.payload,
                d.c.attempts,
                webhooks.c.url,
                webhooks.c.secret,
            )
            .join(webhooks, webhooks.c.id == d.c.webhook_id)
            .where(d.c.id.in_(bindparam("ids", expanding=True)))
        )

        def unit(conn: Connection) -> list[Claimed]:
            ids = [
                r.id
                for r in conn.execute(
                    stmt.returning(d.c.id), {"b_now": now, "b_until": now + timedelta(seconds=hold_s)}
                )
            ]
            if not ids:
                return []
            return [Claimed(*r) for r in conn.execute(read, {"ids": ids})]

        return list(await self.writer(unit))

    async def settle(self, outcomes: list[dict[str, Any]]) -> None:
        """Each attempt's outcome: keys b_id, b_status, b_attempts, b_code, b_error, b_next, b_delivered."""
        d = webhook_deliveries
        stmt = (
            d.update()
            .where(d.c.id == bindparam("b_id"), d.c.status == "pending")
            .values(
                status=bindparam("b_status"),
                attempts=bindparam("b_attempts"),
                last_status_code=bindparam("b_code"),
                last_error=bindparam("b_error"),
                next_attempt_at=bindparam("b_next"),
                delivered_at=bindparam("b_delivered"),
                claimed_until=None,
            )
        )
        if outcomes:
            await self.writer(lambda conn: conn.execute(stmt, outcomes))

    async def release(self, ids: list[str]) -> None:
        """Give back claims of deliveries not sent (a gateway stopping mid-round)."""
        d = webhook_deliveries
        stmt = d.update().where(d.c.id.in_(ids), d.c.status == "pending").values(claimed_until=None)
        await self.writer(lambda conn: conn.execute(stmt))

    async def prune(self, before: datetime, batch: int = 1000) -> int:
        """Delete settled deliveries made before `before`, a short transaction per `batch` rows."""
        d = webhook_deliveries
        old = (
            select(d.c.id)
            .where(d.c.created_at < before, d.c.status != "pending")
            .limit(batch)
            .scalar_subquery()
        )
        stmt = d.delete().where(d.c.id.in_(old))
        deleted = 0
        while True:
            n = int(await self.writer(lambda conn: conn.execute(stmt).rowcount) or 0)
            deleted += n
            if n < batch:
                return deleted

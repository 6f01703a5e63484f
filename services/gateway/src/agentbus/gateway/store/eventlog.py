"""A run's stored event log, read in the ways the hub, plans and the reaper need (the rarer reads,
through the async engine). Part of `GatewayStore`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from agentbus.gateway.store.tables import run_events

_EVENT_FRAME = (run_events.c.run_id, run_events.c.task_id, run_events.c.seq, run_events.c.event_type)


class EventLogReads:
    engine: AsyncEngine

    async def event_payloads(self, run_id: str, types: Sequence[str]) -> list[str]:
        """The run's stored events of these types, in seq order."""
        async with self.engine.connect() as conn:
            payloads = await conn.execute(
                select(run_events.c.payload)
                .where(run_events.c.run_id == run_id, run_events.c.event_type.in_(list(types)))
                .order_by(run_events.c.seq)
            )
            return list(payloads.scalars())

    async def replay(self, run_id: str | None, task_id: str | None, since: int) -> list[Any]:
        """(run_id, task_id, seq, event_type, payload) of a run's (or a task's runs') events with
        seq > since, in the order they were stored."""
        where = [run_events.c.seq > since]
        where.append(run_events.c.run_id == run_id if run_id else run_events.c.task_id == task_id)
        async with self.engine.connect() as conn:
            return list(
                await conn.execute(
                    select(*_EVENT_FRAME, run_events.c.payload).where(*where).order_by(run_events.c.id)
                )
            )

    async def events_between(self, run_id: str, after: int, before: int) -> list[Any]:
        """(run_id, task_id, seq, event_type, payload) of a run's events with after < seq < before."""
        async with self.engine.connect() as conn:
            return list(
                await conn.execute(
                    select(*_EVENT_FRAME, run_events.c.payload)
                    .where(run_events.c.run_id == run_id, run_events.c.seq > after, run_events.c.seq < before)
                    .order_by(run_events.c.seq)
                )
            )

    async def last_seq_before(self, run_id: str, moment: datetime) -> int:
        """The highest seq among the run's events that happened before `moment` (0: none)."""
        async with self.engine.connect() as conn:
            found = (
                await conn.execute(
                    select(func.max(run_events.c.seq)).where(
                        run_events.c.run_id == run_id, run_events.c.timestamp < moment
                    )
                )
            ).scalar()
        return found or 0

    async def timeline(self, run_id: str, since: datetime) -> list[tuple[int, datetime]]:
        """(seq, timestamp) of the run's events that happened at or after `since`."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(run_events.c.seq, run_events.c.timestamp).where(
                    run_events.c.run_id == run_id, run_events.c.timestamp >= since
                )
            )
            return [(r.seq, r.timestamp) for r in rows]

"""Conflicting duplicates: two different events that claim the same (run_id, seq).

A redelivered event has the very bytes stored at its seq and is simply acked. A conflicting one
(an event a run's lost holder published, or one published by something that is not the run's
runner) is never merged silently: the log keeps the event of the run's holder, the runner named in
its checkpoint (`runner_id`), whose event ids start with `<runner_id>/`. The other event is
dead-lettered on `events.dead` with the reason in the `Agentbus-Error` header, and counted.

- the new event is the holder's and the stored one is not: it replaces the stored one, with its
  effects (a terminal event the holder published ends the run even if another event took its seq);
- the stored event is the holder's: the new one is dropped;
- neither (the holder has not checkpointed this seq yet): asked again a moment later, and dropped
  after `RETRIES` tries, so the stored one stays.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter

import msgspec

from agentbus.contracts import RunCheckpointHead, subjects
from agentbus.contracts.codec import decoder
from agentbus.gateway.bus import Bus
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.effects import Batch, Conflict

log = logging.getLogger(__name__)


class EventId(msgspec.Struct):
    id: str = ""


_id = decoder(EventId)
_head = decoder(RunCheckpointHead)


class Verdict(enum.Enum):
    REPLACED = "replaced"  # the new event took the stored one's place
    DROPPED = "dropped"  # the stored event stays
    LATER = "later"  # undecided: ask again once the holder has checkpointed


class Conflicts:
    RETRIES = 10  # deliveries of a conflicting event before it is dropped undecided

    def __init__(self, store: GatewayStore, bus: Bus) -> None:
        self.store = store
        self.bus = bus
        self.counts: Counter[str] = Counter()  # verdict -> conflicts settled so (dead letters)

    async def resolve(self, conflict: Conflict, deliveries: int) -> tuple[Verdict, Batch]:
        """Settle one conflict; the events newly stored (the replacement) come back with REPLACED."""
        event = conflict.event
        holder = await self._holder(event.run_id)
        try:
            stored_id = _id.decode(conflict.stored).id
        except (msgspec.DecodeError, msgspec.ValidationError):
            stored_id = ""
        new_is_holders = holder is not None and event.id.startswith(holder)
        stored_is_holders = holder is not None and stored_id.startswith(holder)
        where = f"run {event.run_id} seq {event.seq}"
        if new_is_holders and not stored_is_holders:
            replaced = await self.store.replace_event(event, conflict.raw)
            await self._dead(
                conflict.stored.encode(), f"conflicting duplicate of {where}: replaced by its holder's"
            )
            self.counts[Verdict.REPLACED.value] += 1
            return Verdict.REPLACED, replaced.events
        if stored_is_holders or deliveries >= self.RETRIES:
            why = (
                "its holder's is stored"
                if stored_is_holders
                else "its holder is unknown; the stored one stays"
            )
            await self._dead(conflict.raw, f"conflicting duplicate of {where}: {why}")
            self.counts[Verdict.DROPPED.value] += 1
            return Verdict.DROPPED, []
        return Verdict.LATER, []

    async def _holder(self, run_id: str) -> str | None:
        """`<runner_id>/`, the prefix of the ids of the events the run's holder publishes."""
        try:
            entry = await self.bus.kv.get(subjects.state_key(run_id))
            head = _head.decode(entry.value)
        except Exception:  # no checkpoint (yet), or an unreadable one: undecided
            return None
        return f"{head.runner_id}/" if head.runner_id else None

    async def _dead(self, payload: bytes, error: str) -> None:
        log.warning("%s; dead-lettered", error)
        await self.bus.nc.publish(subjects.EVENTS_DEAD, payload, headers={"Agentbus-Error": error})

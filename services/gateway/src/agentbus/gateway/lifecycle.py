"""Cancelling and deleting runs and tasks: the parts shared by both resources."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agentbus.contracts import RunControl
from agentbus.contracts.status import TERMINAL_RUN_STATUSES
from agentbus.gateway.bus import Bus
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.people import AuditEntry

# Waits until the given runs have ended (their terminal event is stored) or the timeout passes.
WaitEnded = Callable[[Sequence[str], float], Awaitable[None]]


class Lifecycle:
    def __init__(
        self,
        store: GatewayStore,
        bus: Bus,
        wait_ended: WaitEnded,
        wait_s: float,
        cancel_wait_s: float,
        queue_held: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.wait_ended = wait_ended
        self.wait_s = wait_s
        self.cancel_wait_s = cancel_wait_s
        self.queue_held = queue_held  # queues a held run whose cancel is stored (admission.py)

    async def cancel_run(self, run: Any, reason: str) -> Any:
        """Cancel one run; the run's row once it ended, or as it stands after `cancel_wait_s`.

        The runner may have published its last event just before the cancel reached it (a run
        approved a moment earlier can complete at once): waiting for the run to end lets the caller
        answer 409 for such a run instead of a 202 that is not honoured. A run that has not ended
        within the wait holds the stored cancel, which every holder reads before its next event.
        """
        await self.cancel(run, reason)
        await self.wait_ended([run.id], self.cancel_wait_s)
        return await self.store.run(run.id)

    async def cancel(self, run: Any, reason: str, queue_held: bool = True) -> None:
        """Store and announce the cancel (the run's holder stops it; a parked run is woken for it).

        A held run (its task at max_concurrent_runs) was never queued: no runner knows it, and a wake
        would name a run without a record. Its cancel is stored, then it is queued, and the runner
        that takes it ends it at once without starting it; a held run about to be deleted is not
        queued (the stored cancel stops it should a release queue it meanwhile)."""
        held = getattr(run, "held", False) and run.status == "pending"
        control = RunControl(run_id=run.id, kind="cancel", reason=reason)
        await self.bus.decide(control, run.agent, run.task_id, wake=not held)
        if held and queue_held and self.queue_held is not None:
            await self.queue_held(run)

    async def _cancel_live(self, rows: Sequence[Any], reason: str) -> None:
        """Cancel the live runs and give them a moment to report `cancelled`, so their last event
        is not orphaned. A run no runner has started yet has nothing to report: not waited for."""
        live = [r for r in rows if r.status not in TERMINAL_RUN_STATUSES]
        for r in live:
            await self.cancel(r, reason, queue_held=False)
        started = [r.id for r in live if r.status != "pending"]
        if started:
            await self.wait_ended(started, self.wait_s)

    async def delete_run(self, run: Any, audit: AuditEntry | None = None) -> None:
        await self._cancel_live([run], "run deleted")
        names = await self.store.delete_run(run.id, audit)
        await self.bus.delete_artifacts(run.id, names)
        await self.bus.resource_deleted(run.task_id, run.id)

    async def delete_task(self, task_id: str, audit: AuditEntry | None = None) -> None:
        await self._cancel_live(await self.store.task_runs(task_id), "task deleted")
        for run_id, name in await self.store.delete_task(task_id, audit):
            await self.bus.delete_artifacts(run_id, [name])
        await self.bus.resource_deleted(task_id)

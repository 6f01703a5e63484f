"""A task's `max_concurrent_runs`: runs beyond it wait, held, and start in creation order as
earlier ones end; across runner and gateway copies and their restarts (the state is the database's).

Admission: `GatewayStore.create_run` stores a run `held` when its task has a limit and already has
that many live runs, or held runs waiting (a new run never overtakes them). `RunService.create`
does not queue a held run: it answers it `pending`, like any run no runner has taken yet.

Release (`release`): one transaction under the task's row lock reads the oldest held runs (by run
number) that fit its free slots; each is queued as at creation (its record, then its message), in
that order, and only then marked not held. `held` therefore never hides a run that was never queued
as queued. A crash after queuing and before marking leaves a queued run marked held: it is then the
oldest held run, so the next release takes it first again; queuing it twice is harmless (the
start's message id within the broker's duplicate window, and after it the runner, which finds the
run claimed or ended). Two copies releasing at once read the same runs and queue them twice, the
same way.

What releases (each reads the slots afresh, so any of them may run at any time):
- a terminal event of a task this process watches: every stored event reaches every gateway copy's
  hub (its own through the ingest, the others' on events.live), which hands them to `stored`. A
  task is watched once this process has seen it hold runs (`watch`); every other event costs a set
  lookup, and nothing while no task is watched;
- a PATCH of the task's `max_concurrent_runs` (`limit_changed`);
- the start of the gateway and every round of its reaper (`sweep`): each task with held runs, which
  is also what this process then watches. The safety net for what the above can miss: an
  events.live announcement lost, a copy that held runs and died, a broker away during a release.

A held run that is cancelled is queued with its cancel stored first (`queue_cancelled`): the runner
that takes it ends it at once (`cancelled`, its only event) without starting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from agentbus.contracts.status import STATUS_AFTER_EVENT, TERMINAL_RUN_STATUSES
from agentbus.gateway.bus import Bus
from agentbus.gateway.starts import run_start
from agentbus.gateway.store import GatewayStore

log = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset(e for e, status in STATUS_AFTER_EVENT.items() if status in TERMINAL_RUN_STATUSES)


class Admission:
    def __init__(self, store: GatewayStore, bus: Bus) -> None:
        self.store = store
        self.bus = bus
        self.watched: set[str] = set()  # tasks that may have held runs
        self._watched_since_sweep: set[str] = set()
        self._releasing: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()

    async def start(self) -> None:
        await self.sweep()

    async def stop(self) -> None:
        tasks = list(self._releasing.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def watch(self, task_id: str) -> None:
        """This task may have held runs: release them as its runs end."""
        self.watched.add(task_id)
        self._watched_since_sweep.add(task_id)

    def stored(self, frames: Sequence[Any]) -> None:
        """Events just stored, by this gateway copy or another (the hub's `on_frames`)."""
        if not self.watched:
            return
        for frame in frames:
            if frame.task_id in self.watched and frame.event_type in TERMINAL_EVENTS:
                self._trigger(frame.task_id)

    def _trigger(self, task_id: str) -> None:
        """Release in the background, one release of a task at a time (one more after it when
        triggered meanwhile)."""
        if task_id in self._releasing:
            self._again.add(task_id)
            return
        self._releasing[task_id] = asyncio.create_task(self._release_loop(task_id), name=f"release-{task_id}")

    async def _release_loop(self, task_id: str) -> None:
        try:
            while True:
                self._again.discard(task_id)
                await self.release_logged(task_id)
                if task_id not in self._again:
                    return
        finally:
            self._releasing.pop(task_id, None)

    async def release(self, task_id: str) -> list[str]:
        """Queue the oldest held runs of the task that fit its free slots; the ids queued. Stops at
        the first that cannot be queued (the broker is away): the later ones wait behind it."""
        task, held = await self.store.held.releasable(task_id)
        queued: list[str] = []
        for run in held:
            try:
                await self.bus.start_run(run_start(task, run))
            except Exception as exc:
                log.warning("could not queue held run %s (%r); retried by a later release", run.id, exc)
                break
            queued.append(run.id)
        if queued:
            await self.store.held.unhold(task_id, queued)
            log.info("task %s: %d held run(s) queued: %s", task_id, len(queued), ", ".join(queued))
        return queued

    async def release_logged(self, task_id: str) -> list[str]:
        try:
            return await self.release(task_id)
        except Exception as exc:  # the database is away: the reaper's next round does it
            log.warning("releasing the held runs of task %s failed: %r", task_id, exc)
            return []

    async def limit_changed(self, task_id: str) -> None:
        """The task's `max_concurrent_runs` changed: a higher limit (or none) frees slots now; with
        a limit, runs created through another copy may be held from now on."""
        self.watch(task_id)
        await self.release_logged(task_id)

    async def sweep(self) -> None:
        """Release every task's held runs that fit its free slots, and watch those tasks (the
        gateway's start and the reaper's every round)."""
        try:
            self._watched_since_sweep = set()
            found = await self.store.held.tasks()
            # Tasks watched during the query stay watched: their held runs may be committing.
            self.watched = {task_id for task_id, _ in found} | self._watched_since_sweep
        except Exception as exc:
            log.warning("looking for held runs failed: %r", exc)
            return
        for task_id, room in found:
            if room:
                await self.release_logged(task_id)

    async def queue_cancelled(self, run: Any) -> None:
        """Queue a held run whose cancel is stored (`Lifecycle.cancel`): the runner that takes it
        finds the cancel before anything else and ends it, `cancelled` its only event."""
        task = await self.store.task(run.task_id)
        if task is None:
            return  # deleted meanwhile, with the run
        await self.bus.start_run(run_start(task, run))
        await self.store.held.unhold(run.task_id, [run.id])

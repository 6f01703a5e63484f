"""Pulling work: one lane per agent kind this runner serves, within its slots.

Each lane is a pull consumer of the shared work queue (`run.start.<kind>` and `run.wake.<kind>`),
pulled one message at a time while the kind has a free slot here; a fetched message then waits for
one of the runner's slots and is handed to `accept`, which holds the run and gives the slots back
(`release`) when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import BadRequestError

from agentbus.contracts import subjects
from agentbus.runner.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Lane:
    """One work queue consumer this runner pulls from: the one of an agent kind it serves (its starts
    and its wakes)."""

    consumer: str
    subjects: list[str]
    slots: asyncio.Semaphore | None  # the kind's limit on this runner (RUNNER_AGENT_CONCURRENCY)
    psub: Any = None


Accept = Callable[[Msg, Lane], Awaitable[None]]


class Puller:
    def __init__(
        self, settings: Settings, kinds: Sequence[str], accept: Accept, stopping: asyncio.Event
    ) -> None:
        self.settings = settings
        self.accept = accept
        self.stopping = stopping  # set by the runner when it stops
        self.slots = asyncio.Semaphore(settings.max_concurrency)
        self.lanes = [
            Lane(
                subjects.kind_consumer(kind),
                [subjects.run_start(kind), subjects.run_wake(kind)],
                asyncio.Semaphore(settings.agent_concurrency[kind])
                if kind in settings.agent_concurrency
                else None,
            )
            for kind in kinds
        ]
        self.task: asyncio.Task[None] | None = None

    async def bind(self, js: Any) -> None:
        """Create (or update) each lane's durable consumer and bind a pull subscription to it."""
        self.js = js
        for lane in self.lanes:
            await self._ensure_consumer(lane)
            lane.psub = await js.pull_subscribe_bind(
                durable=lane.consumer, stream=subjects.RUN_COMMANDS_STREAM
            )

    def start(self) -> None:
        self.task = asyncio.create_task(self._pull(), name="runner-pull")

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def wait(self) -> None:
        """Until every lane has let its lingering pull request end (after `cancel`)."""
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    async def _ensure_consumer(self, lane: Lane) -> None:
        config = ConsumerConfig(
            durable_name=lane.consumer,
            filter_subjects=lane.subjects,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            max_deliver=-1,  # a run is never dropped: it is redelivered until some runner finishes it
            max_ack_pending=-1,  # capacity is bounded by each runner's slots, not by the server
        )
        try:  # create, or update an existing one to this config
            await self.js.add_consumer(subjects.RUN_COMMANDS_STREAM, config)
        except BadRequestError as exc:  # e.g. a field that cannot be changed: use the consumer as it is
            log.warning("keeping the existing %s consumer: %s", lane.consumer, exc)

    async def _pull(self) -> None:
        # return_exceptions: on stop, wait for every lane to let its lingering pull request end (without
        # it, gather returns as soon as the first lane is cancelled and leaves the others running).
        await asyncio.gather(*(self._supervised(lane) for lane in self.lanes), return_exceptions=True)

    async def _supervised(self, lane: Lane) -> None:
        try:
            await self._lane_loop(lane)
        except Exception:
            log.exception("pulling %s stopped after an unexpected error", lane.consumer)
            raise

    async def _lane_loop(self, lane: Lane) -> None:
        """Pull one run at a time from the lane while its kind has a free slot here.

        The runner-wide slot is taken after the fetch, not before: a lane's lingering pull request
        must not hold a slot another kind's run could use. So each lane holds at most one fetched
        run waiting for a slot (kept ours with in_progress()); the rest wait in the queue, in order.
        """
        while not self.stopping.is_set():
            if lane.slots is not None:
                await lane.slots.acquire()  # cancelling here loses nothing
            fetch = asyncio.ensure_future(self._fetch_one(lane))
            try:
                msg = await asyncio.shield(fetch)
            except asyncio.CancelledError:
                # stop(): let the lingering pull request end, so no run is delivered to a dead inbox.
                self.release(lane, runner_slot=False)
                msg = await fetch
                if msg is not None:
                    with suppress(Exception):
                        await msg.nak()
                raise
            if msg is None:
                self.release(lane, runner_slot=False)
                continue
            try:
                await self._wait_for_slot(msg)
            except asyncio.CancelledError:
                self.release(lane, runner_slot=False)
                with suppress(Exception):
                    await msg.nak()
                raise
            if self.stopping.is_set():
                self.release(lane)
                with suppress(Exception):
                    await msg.nak()
            else:
                await self.accept(msg, lane)

    def release(self, lane: Lane, runner_slot: bool = True) -> None:
        """Give back the slots a run of `lane` held (the runner-wide one too, unless told not to)."""
        if runner_slot:
            self.slots.release()
        if lane.slots is not None:
            lane.slots.release()

    async def _wait_for_slot(self, msg: Msg) -> None:
        acquire = asyncio.ensure_future(self.slots.acquire())
        try:
            while True:
                done, _ = await asyncio.wait({acquire}, timeout=self.settings.ack_wait_s / 3)
                if done:
                    return
                with suppress(Exception):
                    await msg.in_progress()  # still ours: not redelivered while it waits
        except asyncio.CancelledError:
            if acquire.done() and not acquire.cancelled():
                self.slots.release()
            acquire.cancel()
            raise

    async def _fetch_one(self, lane: Lane) -> Msg | None:
        # One message per request: a batch > 1 makes nats-py wait for the whole batch or the timeout.
        try:
            return (await lane.psub.fetch(1, timeout=self.settings.fetch_timeout_s))[0]
        except TimeoutError:
            return None
        except Exception as exc:  # broker down or reconnecting: back off, never crash the loop
            log.warning("fetching work failed: %r", exc)
            with suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 1.0)
            return None

"""Streamed agent text as `progress` events, coalesced: at most one per interval per run."""

from __future__ import annotations

import time
from typing import Any

from agentbus.contracts import Progress
from agentbus.contracts.events import ProgressData

# The text a progress event carries is the tail of what the agent produced so far in the phase or
# step: enough to show it streaming, while events stay small.
PARTIAL_MAX_CHARS = 4000


class ProgressReporter:
    """Set `at(...)` when a phase or step starts; the agent then calls it with its text so far.

    Calls within `interval_s` of the last emitted event are dropped (each call carries the whole
    text so far, so the next emitted one loses nothing); so are calls while another agent-caused
    event is being written.
    """

    def __init__(self, record: Any, interval_s: float) -> None:
        self.record = record
        self.interval_s = interval_s
        self._last = float("-inf")
        self.step, self.total, self.percent = 0, 0, 0.0
        self.phase, self.title = "planning", None

    def at(self, step: int, total: int, percent: float, phase: str, title: str | None) -> None:
        self.step, self.total, self.percent, self.phase, self.title = step, total, percent, phase, title

    async def __call__(self, partial: str) -> None:
        now = time.monotonic()
        lock = self.record._agent_emit
        if now - self._last < self.interval_s or lock.locked() or not partial:
            return
        self._last = now
        text = partial if len(partial) <= PARTIAL_MAX_CHARS else "..." + partial[-PARTIAL_MAX_CHARS:]
        if self.phase == "executing":
            message = f"Step {self.step}/{self.total} in progress: {self.title}"
        else:
            message = f"{self.phase.capitalize()}..."
        async with lock:
            await self.record._emit(
                Progress,
                ProgressData(
                    step=self.step,
                    total_steps=self.total,
                    progress_percent=self.percent,
                    current_phase=self.phase,
                    title=self.title,
                    partial=text,
                ),
                message,
            )

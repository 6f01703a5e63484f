"""The runs PostgreSQL's event batch last wrote, as it wrote them: what its one-statement path
(`store/events.py`) computes the next events' effects from, instead of locking and reading them.

A run's row is remembered with its version, PostgreSQL's `xmin` (the transaction that wrote that
version of the row; any update makes a new one). The one-statement path writes a run only where
its `xmin` is still the remembered one, so a row that anything else changed since (an approval, a
cancel, the reaper, another gateway copy's batch) is left alone and its events go the locking
way. A stale or missing entry therefore costs time, never correctness.

Only events whose effects are the run's own columns and its task's status take that path
(`FAST`), and only events newer than the remembered `last_seq`: with the row unchanged since,
no such event can have been stored (every stored event moved `last_seq` to at least its seq in
the transaction that stored it), so they are all new and no lock is needed to tell.
"""

from __future__ import annotations

from typing import Any

from agentbus.contracts import events as ev
from agentbus.contracts.status import TERMINAL_RUN_STATUSES
from agentbus.gateway.store.effects import Batch

# Event types whose effects are only the run's columns and its task's status: no inbox, no
# artifact index, no task counters (the batch also checks the effects it computed).
FAST: frozenset[type[ev.Event]] = frozenset((ev.AnalysisStart, ev.PlanReady, ev.Progress))
Row = dict[str, Any]  # a run's `effects.RUN_READ`


class KnownRuns:
    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._rows: dict[str, tuple[Row, str]] = {}  # run id -> (row, xmin); oldest first

    def __len__(self) -> int:
        return len(self._rows)

    def remember(self, row: Row, xmin: str) -> None:
        """`row` is stored as this version (`xmin`); a run that ended is forgotten (no events follow)."""
        self._rows.pop(row["id"], None)
        if row["status"] in TERMINAL_RUN_STATUSES:
            return
        self._rows[row["id"]] = (row, xmin)
        if len(self._rows) > self.size:
            del self._rows[next(iter(self._rows))]

    def forget(self, run_id: str) -> None:
        self._rows.pop(run_id, None)

    def split(self, batch: Batch) -> tuple[dict[str, Row], dict[str, str], Batch, Batch]:
        """The batch as (copies of the known rows, their xmins, events for the one-statement path,
        the rest), each run's events kept together and in order."""
        by_run: dict[str, Batch] = {}
        for item in batch:
            by_run.setdefault(item[0].run_id, []).append(item)
        rows: dict[str, Row] = {}
        xmins: dict[str, str] = {}
        fast: Batch = []
        rest: Batch = []
        for run_id, events in by_run.items():
            known = self._rows.get(run_id)
            if known is not None and all(
                type(e) in FAST and e.seq > (known[0]["last_seq"] or 0) for e, _ in events
            ):
                rows[run_id], xmins[run_id] = dict(known[0]), known[1]
                fast += events
            else:
                rest += events
        return rows, xmins, fast, rest

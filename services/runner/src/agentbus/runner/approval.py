"""A run waiting for a person: the `approval_required` event, the park, the decision or the deadline.

Waiting holds nothing: the run is parked in its checkpoint and released (`RunParked`); its work
message comes back at the deadline, or a `run.wake` claims it earlier for a decision or a cancel.
At the deadline the run's `on_approval_timeout` decides: end it `timeout`, `reject` it, or `approve`
it (decided by no one). The policy is read from the run's stored record, so whichever runner holds
the run then applies it.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from agentbus.contracts import (
    ApprovalRequired,
    Approved,
    Rejected,
    RevisionRequested,
    RunControl,
    Timeout,
)
from agentbus.contracts.events import ApprovalRequiredData, DecisionData, RevisionData, TimeoutData
from agentbus.contracts.messages import deadline_feedback
from agentbus.runner.record import RunRecord, since, utcnow
from agentbus.runner.store import Checkpoint

log = logging.getLogger(__name__)


class RunParked(Exception):
    """The run waits for a decision and is parked in its checkpoint: its runner lets it go.

    `delay`: seconds to its approval deadline. The runner hands its work message back to JetStream
    with that delay, so the deadline wakes the run on any runner, durably; a decision or a cancel
    wakes it earlier with a `run.wake` message.
    """

    def __init__(self, delay: float) -> None:
        super().__init__(f"parked for up to {delay:.1f}s")
        self.delay = delay


class RunApproval(RunRecord):
    """The approval phase of a run (`awaiting_approval`), on top of its record."""

    async def _approval(self) -> None:
        if self.cp.approval_started_at is None:
            now = utcnow()
            await self._emit(
                ApprovalRequired,
                ApprovalRequiredData(
                    plan=self.cp.plan or {},
                    timeout_s=self.start.approval_timeout_s,
                    version=self.cp.plan_version,
                ),
                "Waiting for approval",
                now=now,
                approval_started_at=now,
            )
        ctl = await self._wait_for_decision()
        this_round = since(self.cp.approval_started_at, utcnow())
        waited = round(self.cp.approval_wait_before + this_round, 3)
        if ctl is None:
            await self._deadline(waited)
        elif ctl.kind == "cancel" or self.cancel_reason is not None:
            self.request_cancel(ctl.reason)  # a no-op when the control message already set it
            await self._cancelled()
        elif ctl.kind == "reject" and ctl.revise and len(self.cp.revisions) < self.start.max_revision_rounds:
            revision = {"version": self.cp.plan_version, "plan": self.cp.plan, "feedback": ctl.feedback}
            self.ctx.revisions = [*self.cp.revisions, revision]
            await self._emit(
                RevisionRequested,
                RevisionData(
                    version=self.cp.plan_version, round=len(self.ctx.revisions), feedback=ctl.feedback
                ),
                f"Plan version {self.cp.plan_version} sent back for revision",
                phase="planning",
                revisions=self.ctx.revisions,
                approval_started_at=None,
                approval_wait_before=self.cp.approval_wait_before + this_round,
            )
        elif ctl.kind == "reject":
            if ctl.revise:
                log.info("run %s: no revision rounds left; the rejection ends the run", self.run_id)
            await self._finish(
                Rejected,
                lambda s: DecisionData(feedback=ctl.feedback, stats=s),
                "Plan rejected",
                feedback=ctl.feedback,
                approval_wait=waited,
            )
        else:
            self.ctx.feedback = ctl.feedback
            await self._emit(
                Approved,
                DecisionData(feedback=ctl.feedback),
                "Plan approved",
                phase="executing",
                feedback=ctl.feedback,
                approval_wait=waited,
            )

    async def _deadline(self, waited: float) -> None:
        """No decision came in time: apply the run's `on_approval_timeout`."""
        policy = self.start.on_approval_timeout
        if policy == "reject":
            feedback = deadline_feedback(policy)
            await self._finish(
                Rejected,
                lambda s: DecisionData(feedback=feedback, stats=s),
                "Plan rejected: no decision within the approval deadline",
                approval_wait=waited,
            )
        elif policy == "approve":
            # The event says why; the agent gets no approver's note (`feedback` stays unset): no one
            # wrote one.
            await self._emit(
                Approved,
                DecisionData(feedback=deadline_feedback(policy)),
                "Plan approved: no decision within the approval deadline",
                phase="executing",
                approval_wait=waited,
            )
        else:
            await self._finish(
                Timeout,
                lambda s: TimeoutData(phase="approval", stats=s),
                "Approval timed out",
                approval_wait=waited,
            )

    async def _wait_for_decision(self) -> RunControl | None:
        """The decision (or a stored cancel), or None when approval_timeout_s ran out.

        When neither has come, the run is parked: its checkpoint says so, and RunParked lets the
        runner release it. Waiting costs no slot and no task, however long the deadline.
        """
        await self.durable()  # the waiting state is stored before anyone is waited on
        self._decision = asyncio.get_running_loop().create_future()
        self.waiting_for_human = True
        parked = False
        try:
            while True:
                # Read the stored keys after registering the future: a decision made while no runner
                # held the run (or before we got here) is applied, and none can slip between.
                stored_keys = self._prefetched or await asyncio.gather(
                    self.store.stored_cancel(), self.store.stored_decision()
                )
                self._prefetched = None
                for stored in stored_keys:
                    if stored is not None:
                        self.offer_decision(stored)
                self._check_interrupted()
                remaining = self.start.approval_timeout_s - since(self.cp.approval_started_at, utcnow())
                if self._decision.done() or remaining <= 0:
                    if parked:
                        await self._claim()  # a wake that claimed it first wins: RunLostError
                    return self._decision.result() if self._decision.done() else None
                if parked:
                    raise RunParked(remaining)
                # Park, then read the keys once more: the gateway stores a decision before it sends
                # the wake, and a wake that found the run not yet parked dropped itself, so a
                # decision stored before the park is seen by this second read.
                await self._save_now(msgspec.structs.replace(self.cp, parked=True))
                parked = True
        finally:
            self.waiting_for_human = False

    async def _claim(self) -> None:
        """Hold the run from now on: unparked, owned by this execution's work message.

        Compare-and-set on the checkpoint's revision, so of several wakes of one parked run exactly
        one claims it; the others get RunLostError and drop their message.
        """
        await self._save_now(
            msgspec.structs.replace(self.cp, parked=False, holder=self.token, runner_id=self.runner_id)
        )

    async def _save_now(self, cp: Checkpoint) -> None:
        await self.durable()
        await self.store.save(cp)
        self.cp = cp

"""A run's plan versions, read back from its stored events (each `plan_ready` is one version).

The event log is kept as long as the run, so every version and what became of
it (approved, rejected, sent back for revision) needs no table of its own.
"""

from __future__ import annotations

from typing import Any

from agentbus.contracts import decode_event
from agentbus.contracts import events as ev
from agentbus.gateway.schemas import Approval, PlanVersion
from agentbus.gateway.store import GatewayStore

_PLAN_EVENTS = ("plan_ready", "revision_requested", "approved", "rejected")


async def waiting_version(store: GatewayStore, run_id: str) -> int | None:
    """The version of the plan the run waits for a decision on (None: unknown, e.g. no event yet)."""
    payload = await store.last_event_payload(run_id, "approval_required")
    if payload is None:
        return None
    event = decode_event(payload.encode())
    return event.data.version if isinstance(event, ev.ApprovalRequired) else None


async def versions(store: GatewayStore, run_id: str) -> list[PlanVersion]:
    events = [decode_event(p.encode()) for p in await store.event_payloads(run_id, _PLAN_EVENTS)]
    out: list[PlanVersion] = []
    for event in events:
        current: Any = out[-1] if out else None
        match event:
            case ev.PlanReady():
                out.append(
                    PlanVersion(
                        version=event.data.version,
                        plan=event.data.plan,
                        created_at=event.timestamp,
                        status="pending",
                        decision=None,
                    )
                )
            case ev.RevisionRequested() if current is not None:
                current.status = "revised"
                current.decision = Approval(
                    approved=False,
                    feedback=event.data.feedback,
                    decided_at=event.timestamp,
                    revise=True,
                    plan_version=current.version,
                )
            case ev.Approved() | ev.Rejected() if current is not None:
                approved = isinstance(event, ev.Approved)
                current.status = "approved" if approved else "rejected"
                current.decision = Approval(
                    approved=approved,
                    feedback=event.data.feedback,
                    decided_at=event.timestamp,
                    plan_version=current.version,
                )
    return out

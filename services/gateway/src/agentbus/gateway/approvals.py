"""Approvals: the inbox of plan versions that waited for a decision. The REST controller (HTTP
only) and `ApprovalService` (the rules).

The rows are kept by the store: added and settled by the run's events in their batch's
transaction, and settled by a person's decision (`POST /api/runs/{id}/approve`) in the
decision's transaction, with who made it.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.exceptions import NotFoundException

from agentbus.gateway.convert import approval_item_out
from agentbus.gateway.errors import documented
from agentbus.gateway.identity import Identity
from agentbus.gateway.params import Cursor, Filter, Limit, Skip, checked_cursor, page_input, whole_numbers
from agentbus.gateway.schemas import ApprovalItem, ApprovalPage, ApprovalStatus
from agentbus.gateway.store import GatewayStore


def refusal(task: Any, run: Any, approved: bool, user: Identity) -> str | None:
    """Why `user` may not decide on `run` of `task`, or None when they may: only the task's
    `approvers` (key ids, JWT identities or role names; none listed: any approver) may, and with
    `approval_by_other` not the identity that started the run (the four-eyes rule: they may still
    reject their own run)."""
    if task.approvers and user.id not in task.approvers and user.role not in task.approvers:
        return f"only the task's approvers may decide on run {run.id} ({', '.join(task.approvers)})"
    if approved and task.approval_by_other and (run.created_by or {}).get("id") == user.id:
        return (
            f"run {run.id} needs another person's approval (approval_by_other): "
            "the identity that started it cannot approve it"
        )
    return None


class ApprovalService:
    def __init__(self, store: GatewayStore) -> None:
        self.store = store

    async def get(self, approval_id: str) -> ApprovalItem:
        row = await self.store.approvals.one(approval_id)
        if row is None:
            raise NotFoundException(f"approval {approval_id} not found")
        return approval_item_out(row)

    async def page(
        self, status: str | None, task_id: str | None, skip: int, limit: int, cursor: str | None
    ) -> ApprovalPage:
        with page_input():
            page = await self.store.approvals.page(status, task_id, skip, limit, checked_cursor(cursor, skip))
        return ApprovalPage(
            [approval_item_out(r) for r in page.rows], page.total, skip, limit, page.next_cursor
        )


class ApprovalController(Controller):
    path = "/api/approvals"
    tags = ["approvals"]

    @get(
        "/",
        summary="List approvals: with status=pending the oldest request first, otherwise newest first",
        responses=documented(503),
        before_request=whole_numbers,
    )
    async def list_page(
        self,
        approval_service: ApprovalService,
        status: ApprovalStatus | None = None,
        task_id: Filter = None,
        skip: Skip = 0,
        limit: Limit = 10,
        cursor: Cursor = None,
    ) -> ApprovalPage:
        return await approval_service.page(status, task_id, skip, limit, cursor)

    @get("/{approval_id:str}", summary="Get an approval", responses=documented(404, 503))
    async def retrieve(self, approval_id: str, approval_service: ApprovalService) -> ApprovalItem:
        return await approval_service.get(approval_id)

"""Runs: the REST controller (HTTP only) and `RunService` (the rules)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.exceptions import NotFoundException, PermissionDeniedException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from agentbus.common import tracing
from agentbus.common.logs import run_fields
from agentbus.contracts import encode
from agentbus.contracts.status import TERMINAL_RUN_STATUSES, RunStatus
from agentbus.gateway import plans
from agentbus.gateway.access import needs
from agentbus.gateway.agents import Discovery
from agentbus.gateway.approvals import refusal
from agentbus.gateway.artifacts import serve as serve_artifact
from agentbus.gateway.bus import Bus
from agentbus.gateway.convert import artifact_out, decision_of, run_out
from agentbus.gateway.errors import BODY, WRITE, Conflict, PayloadTooLarge, ServiceUnavailable, documented
from agentbus.gateway.identity import LOCAL, Identity
from agentbus.gateway.lifecycle import Lifecycle
from agentbus.gateway.params import (
    Cursor,
    Filter,
    Limit,
    LogLimit,
    LogSince,
    Skip,
    checked_cursor,
    page_input,
    whole_numbers,
)
from agentbus.gateway.people import audit, audit_after, identity_of
from agentbus.gateway.schemas import (
    REVISE_ONLY_REJECTED,
    AnyBytes,
    ApproveBody,
    ArtifactInfo,
    CancelBody,
    EventPage,
    PlanVersion,
    Run,
    RunCreate,
    RunPage,
    RunUpdate,
    accepts,
)
from agentbus.gateway.starts import run_start
from agentbus.gateway.store import GatewayStore, TaskGone
from agentbus.gateway.tasks import TaskService

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


# An artifact's bytes, with the content type it was stored with (`AnyBytes` lists octet-stream too).
_BYTES = ResponseSpec(Any, media_type="*/*", description="the artifact's bytes", generate_examples=False)


_CREATE_SPAN = {"http.request.method": "POST", "http.route": "/api/runs"}

# Records a 403 decided here as an `auth.denied` entry: (the request, the reason, who); `Access.refused`.
Refused = Callable[[Any, str, Identity], Awaitable[None]]


class RunService:
    def __init__(
        self,
        store: GatewayStore,
        bus: Bus,
        discovery: Discovery,
        lifecycle: Lifecycle,
        tasks: TaskService,
        watch: Callable[[str], None] = lambda task_id: None,
        refused: Refused | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.discovery = discovery
        self.lifecycle = lifecycle
        self.tasks = tasks
        self.watch = watch  # this task may have held runs: release them as its runs end (admission.py)
        self.refused = refused  # the decision rules' 403s go to access's `auth.denied` log

    async def load(self, run_id: str) -> Any:
        row = await self.store.run(run_id)
        if row is None:
            raise NotFoundException(f"run {run_id} not found")
        return row

    async def create(self, data: RunCreate, user: Identity = LOCAL) -> Run:
        task = await self.tasks.load(data.task_id)
        await self.discovery.require(task.agent)  # 409 when no runner serves the kind
        ts = now()
        run_id = uuid.uuid4().hex
        require_approval = task.require_approval if data.require_approval is None else data.require_approval
        agent_config = task.agent_config if data.agent_config is None else data.agent_config
        values = {
            "id": run_id,
            "task_id": task.id,
            "status": "pending",
            "agent": task.agent,
            "require_approval": require_approval,
            "max_revision_rounds": task.max_revision_rounds,
            "agent_config": agent_config,
            "progress": 0.0,
            "labels": data.labels,
            "last_seq": 0,
            "created_at": ts,
            "updated_at": ts,
            "created_by": user.actor(),
        }
        if tracing.enabled():  # the runner continues this request's trace, even for a run held now
            values["traceparent"] = tracing.traceparent()
        # The record goes to the broker whole (KV and the work queue): one over its message size
        # limit is refused here, before anything is stored (a run number of ten digits at most, and
        # room for the message's headers).
        size = len(encode(run_start(task, SimpleNamespace(**values, run_number=2**31))))
        limit = self.bus.max_payload - 512
        if size > limit:
            raise PayloadTooLarge(
                f"the run's start message would be {size} bytes, over the broker's limit of {limit} "
                "bytes (NATS max_payload): make the task's config and agent_config smaller"
            )
        if task.max_concurrent_runs is not None:
            self.watch(task.id)  # before the run is stored: a run that ends meanwhile releases it
        try:
            row = await self.store.create_run(
                values, audit(user, "run.create", "run", run_id, task_id=task.id)
            )
        except TaskGone:
            raise NotFoundException(f"task {task.id} not found") from None  # deleted a moment ago
        if row.held:
            # Its task is at max_concurrent_runs: queued when an earlier run ends (admission.py).
            self.watch(task.id)
            return run_out(row)
        # Stored first, queued second: a runner's first event always finds the run.
        cmd = run_start(task, row)
        try:
            await self.bus.start_run(cmd)
        except Exception as exc:
            fields = run_fields(task.id, run_id, cmd.traceparent)
            log.warning("could not queue run %s: %s", run_id, type(exc).__name__, extra=fields)
            await self.store.mark_unqueued(run_id)
            raise ServiceUnavailable("message broker unavailable; the run was not queued") from exc
        return run_out(row)

    async def page(
        self, task_id: str | None, status: str | None, skip: int, limit: int, cursor: str | None
    ) -> RunPage:
        with page_input():
            page = await self.store.list_runs(task_id, status, skip, limit, checked_cursor(cursor, skip))
        return RunPage([run_out(r) for r in page.rows], page.total, skip, limit, page.next_cursor)

    async def update(self, run_id: str, data: RunUpdate, user: Identity = LOCAL) -> Run:
        entry = audit(user, "run.update", "run", run_id, fields=["labels"])
        row = await self.store.update_run_labels(run_id, data.labels, now(), entry)
        if row is None:
            raise NotFoundException(f"run {run_id} not found")
        return run_out(row)

    async def may_decide(self, run: Any, approved: bool, user: Identity, request: Any = None) -> None:
        """403 unless `user` may decide on this run: one of the task's `approvers` (key ids, JWT
        identities or role names; none listed: any approver), and not the one who started it when the
        task asks for `approval_by_other` (the four-eyes rule: they may still reject their own run).
        A refusal changes nothing but the trail: with the `request`, it leaves an `auth.denied` entry
        (status 403, the reason), rate limited with access's own."""
        reason = refusal(await self.tasks.load(run.task_id), run, approved, user)
        if reason is None:
            return
        if request is not None and self.refused is not None:
            await self.refused(request, reason, user)
        raise PermissionDeniedException(reason)

    async def decide(
        self, run_id: str, data: ApproveBody, user: Identity = LOCAL, request: Any = None
    ) -> Run:
        run = await self.load(run_id)
        await self.may_decide(run, data.approved, user, request)
        if run.status != "awaiting_approval" or run.approval:
            what = "already decided" if run.approval else f"is {run.status}"
            raise Conflict(f"run {run_id} is not awaiting approval ({what})")
        if data.revise and data.approved:
            raise ValidationException("`revise: true` sends a plan back: it goes with `approved: false`")
        version = await plans.waiting_version(self.store, run_id)
        if data.revise and version is not None and version > run.max_revision_rounds:
            raise Conflict(
                f"run {run_id}: no revision rounds left (plan version {version}, "
                f"max_revision_rounds {run.max_revision_rounds}); approve it or reject it without revise"
            )
        decided_at = now()
        approval = {
            "approved": data.approved,
            "feedback": data.feedback,
            "decided_at": _iso(decided_at),
            "revise": data.revise,
            "plan_version": version,
            "decided_by": {"id": user.id, "name": user.name},
        }
        action = "run.approve" if data.approved else "run.reject"
        entry = audit(
            user, action, "run", run_id, task_id=run.task_id, plan_version=version, revise=data.revise
        )
        # The row is the outbox: committed first (a short write, no lock held across the bus), then
        # handed to the bus. If the bus is away the reaper hands it over again (`redeliver`).
        if not await self.store.record_decision(run_id, approval, decided_at, entry):
            raise Conflict(f"run {run_id} is not awaiting approval (already decided)")
        log.info(
            "run %s: plan version %s %s by %s (%s)",
            run_id,
            version,
            "approved" if data.approved else "sent back for revision" if data.revise else "rejected",
            user.name or user.id,
            user.id,
            extra=run_fields(run.task_id, run_id, getattr(run, "traceparent", None)),
        )
        try:
            await self.bus.decide(decision_of(run_id, approval), run.agent, run.task_id)
        except Exception as exc:
            log.warning(
                "decision on run %s stored; handing it to runners failed (%s), retried later",
                run_id,
                type(exc).__name__,
                extra=run_fields(run.task_id, run_id),
            )
        return run_out(run._replace(approval=approval, updated_at=decided_at))

    async def cancel(self, run_id: str, reason: str | None, user: Identity = LOCAL) -> Run:
        """Cancel a live run: 202 once the cancel is stored (in the broker's KV, which every holder of
        the run reads) and the run was not seen to end otherwise meanwhile; 404 or 409 when it is gone
        or ended first, 503 when the broker is away.

        The `run.cancel` entry is written only for a 202, after the cancel is stored: the cancel makes
        no database write of its own (the run's status moves to `cancelled` by the runner's event,
        later; a held run's `unhold` is admission's record that it was queued, written before the
        outcome is known), so no transaction can hold both (`audit_after`). A refused or failed
        cancel leaves no entry."""
        run = await self.load(run_id)
        if run.status in TERMINAL_RUN_STATUSES:
            raise Conflict(f"run {run_id} has already ended ({run.status})")
        after = await self.lifecycle.cancel_run(run, reason or "cancelled by user")
        if after is None:
            raise NotFoundException(f"run {run_id} not found")  # deleted meanwhile
        if after.status in TERMINAL_RUN_STATUSES and after.status != "cancelled":
            raise Conflict(f"run {run_id} has already ended ({after.status})")
        await audit_after(self.store, audit(user, "run.cancel", "run", run_id, task_id=run.task_id))
        return run_out(after)

    async def logs(self, run_id: str, since: int, limit: int) -> EventPage:
        await self.load(run_id)
        payloads, total = await self.store.logs(run_id, since, limit)
        return EventPage(items=[msgspec.Raw(p.encode()) for p in payloads], total=total)

    async def artifacts(self, run_id: str) -> list[ArtifactInfo]:
        await self.load(run_id)
        return [artifact_out(r) for r in await self.store.artifacts(run_id)]

    async def artifact(self, run_id: str, name: str, range_header: str | None) -> Response[Any]:
        row = await self.store.artifact(run_id, name)
        if row is None:
            raise NotFoundException(f"artifact {name} of run {run_id} not found")
        return await serve_artifact(self.bus, run_id, name, row.content_type, range_header)


class RunController(Controller):
    path = "/api/runs"
    tags = ["runs"]

    @post(
        "/",
        summary="Create a run; it is queued for execution at once",
        responses=documented(
            404,
            409,
            *BODY,
            why={
                404: "the task is not found",
                409: "no runner serves the task's agent kind now",
                413: "the body, or the run's start message (its config and agent_config), is too large",
            },
        ),
        operation_class=accepts(RunCreate),
        opt=needs("operator"),
    )
    async def create(self, data: RunCreate, run_service: RunService, request: Request) -> Run:
        if not tracing.enabled():
            return await run_service.create(data, identity_of(request))
        # A caller's own trace (its `traceparent` header) continues here; else this starts one.
        parent = request.headers.get("traceparent")
        with tracing.span("POST /api/runs", parent=parent, kind="server", attributes=_CREATE_SPAN):
            return await run_service.create(data, identity_of(request))

    @get("/", summary="List runs, newest first", responses=documented(503), before_request=whole_numbers)
    async def list_page(
        self,
        run_service: RunService,
        task_id: Filter = None,
        status: RunStatus | None = None,
        skip: Skip = 0,
        limit: Limit = 10,
        cursor: Cursor = None,
    ) -> RunPage:
        return await run_service.page(task_id, status, skip, limit, cursor)

    @get("/{run_id:str}", summary="Get a run", responses=documented(404, 503))
    async def retrieve(self, run_id: str, run_service: RunService) -> Run:
        return run_out(await run_service.load(run_id))

    @patch(
        "/{run_id:str}",
        summary="Change a run's labels (never its status)",
        responses=documented(404, *BODY),
        operation_class=accepts(RunUpdate),
        opt=needs("operator"),
    )
    async def update(self, run_id: str, data: RunUpdate, run_service: RunService, request: Request) -> Run:
        return await run_service.update(run_id, data, identity_of(request))

    @delete(
        "/{run_id:str}",
        status_code=204,
        summary="Delete a run; a live run is cancelled first",
        responses=documented(404, *WRITE),
        opt=needs("operator"),
    )
    async def remove(
        self, run_id: str, run_service: RunService, lifecycle: Lifecycle, request: Request
    ) -> None:
        run = await run_service.load(run_id)
        await lifecycle.delete_run(
            run, audit(identity_of(request), "run.delete", "run", run_id, task_id=run.task_id)
        )

    @post(
        "/{run_id:str}/approve",
        status_code=200,
        summary="Approve or reject the plan of a waiting run",
        responses=documented(
            404,
            409,
            *BODY,
            why={409: "the run is not awaiting approval, or has no revision rounds left"},
        ),
        operation_class=accepts(ApproveBody, REVISE_ONLY_REJECTED),
        opt=needs("approver"),
    )
    async def approve(self, run_id: str, data: ApproveBody, run_service: RunService, request: Request) -> Run:
        return await run_service.decide(run_id, data, identity_of(request), request)

    @post(
        "/{run_id:str}/cancel",
        status_code=202,
        summary="Cancel a run; the runner stops it",
        responses=documented(404, 409, *BODY, why={409: "the run has already ended"}),
        operation_class=accepts(CancelBody | None),
        opt=needs("operator"),
    )
    async def cancel(
        self, run_id: str, run_service: RunService, request: Request, data: CancelBody | None = None
    ) -> Run:
        return await run_service.cancel(run_id, data.reason if data else None, identity_of(request))

    @get(
        "/{run_id:str}/logs",
        summary="A run's stored events with seq > since, in seq order",
        responses=documented(404, 503),
        before_request=whole_numbers,
    )
    async def logs(
        self, run_id: str, run_service: RunService, since: LogSince = 0, limit: LogLimit = 100
    ) -> EventPage:
        return await run_service.logs(run_id, since, limit)

    @get("/{run_id:str}/artifacts", summary="List a run's artifacts", responses=documented(404, 503))
    async def list_artifacts(self, run_id: str, run_service: RunService) -> list[ArtifactInfo]:
        return await run_service.artifacts(run_id)

    @get(
        "/{run_id:str}/artifacts/{name:str}",
        summary="Download an artifact (streamed; `Range: bytes=a-b` gets a 206)",
        responses={200: _BYTES, 206: _BYTES, **documented(404, 416, 503)},
        operation_class=AnyBytes,
    )
    async def get_artifact(
        self, run_id: str, name: str, request: Request, run_service: RunService
    ) -> Response[Any]:
        return await run_service.artifact(run_id, name, request.headers.get("range"))

    @get(
        "/{run_id:str}/plans",
        summary="Every version of the run's plan, oldest first, with its decision",
        responses=documented(404, 503),
    )
    async def list_plans(
        self, run_id: str, run_service: RunService, store: GatewayStore
    ) -> list[PlanVersion]:
        await run_service.load(run_id)
        return await plans.versions(store, run_id)

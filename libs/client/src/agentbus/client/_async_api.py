"""Every REST call of the gateway's public contract, async (`AsyncClient` adds the streams).

`_sync_api.py` is this module with `async`/`await` taken out (tests/unit/test_client_sync.py checks
it stays so): edit here, then run `.venv/bin/python -m agentbus.client._unasync`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import msgspec

from agentbus.client import _base
from agentbus.client._base import body, decode, query, seg
from agentbus.client.errors import ConnectionFailed
from agentbus.client.events import RunEvent, parse_frame
from agentbus.client.models import (
    ApprovalItem,
    ArtifactInfo,
    AuditItem,
    Health,
    Key,
    Me,
    MetricOut,
    MetricsReport,
    MetricsSeries,
    MetricsSummary,
    NewKey,
    Page,
    Ready,
    Run,
    Task,
)


class EventPage(msgspec.Struct):
    items: list[RunEvent]
    total: int


class _RawPage(msgspec.Struct):
    items: list[msgspec.Raw]
    total: int


class AsyncApi:
    """`url` (else `AGENTBUS_URL`, else http://127.0.0.1:8000) and `token` (else `AGENTBUS_TOKEN`).
    Errors are `agentbus.client.errors.ApiError` subclasses with `status_code` and `detail`."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = _base.resolve_url(url)
        self.token = _base.resolve_token(token)
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, headers=_base.auth_headers(self.token)
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(
        self,
        method: str,
        path: str,
        tp: Any,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        ok: tuple[int, ...] = (),
    ) -> Any:
        content = None if json is None else _base.encode_json(json)
        headers = {"content-type": "application/json"} if content is not None else None
        try:
            response = await self._http.request(method, path, params=params, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"cannot reach the gateway at {self.url}: {exc}") from None
        return decode(response, tp, ok)

    # health
    async def health(self) -> Health:
        return await self._send("GET", "/health", Health)

    async def ready(self) -> Ready:
        """`/ready`, its 503 included (then `status` is not "ok" and `checks` says what is missing)."""
        return await self._send("GET", "/ready", Ready, ok=(503,))

    # tasks
    async def create_task(self, name: str, **fields: Any) -> Task:
        return await self._send("POST", "/api/tasks", Task, json={"name": name, **fields})

    async def list_tasks(
        self, status: str | None = None, skip: int = 0, limit: int = 10, cursor: str | None = None
    ) -> Page[Task]:
        params = query(status=status, skip=skip, limit=limit, cursor=cursor)
        return await self._send("GET", "/api/tasks", Page[Task], params=params)

    async def get_task(self, task_id: str) -> Task:
        return await self._send("GET", f"/api/tasks/{seg(task_id)}", Task)

    async def update_task(self, task_id: str, **fields: Any) -> Task:
        return await self._send("PATCH", f"/api/tasks/{seg(task_id)}", Task, json=fields)

    async def delete_task(self, task_id: str) -> None:
        await self._send("DELETE", f"/api/tasks/{seg(task_id)}", None)

    # runs
    async def start_run(
        self,
        task_id: str,
        *,
        require_approval: bool | None = None,
        agent_config: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
    ) -> Run:
        fields = body(
            task_id=task_id, require_approval=require_approval, agent_config=agent_config, labels=labels
        )
        return await self._send("POST", "/api/runs", Run, json=fields)

    async def list_runs(
        self,
        task_id: str | None = None,
        status: str | None = None,
        skip: int = 0,
        limit: int = 10,
        cursor: str | None = None,
    ) -> Page[Run]:
        params = query(task_id=task_id, status=status, skip=skip, limit=limit, cursor=cursor)
        return await self._send("GET", "/api/runs", Page[Run], params=params)

    async def get_run(self, run_id: str) -> Run:
        return await self._send("GET", f"/api/runs/{seg(run_id)}", Run)

    async def update_run(self, run_id: str, labels: dict[str, str]) -> Run:
        return await self._send("PATCH", f"/api/runs/{seg(run_id)}", Run, json={"labels": labels})

    async def delete_run(self, run_id: str) -> None:
        await self._send("DELETE", f"/api/runs/{seg(run_id)}", None)

    async def approve(self, run_id: str, feedback: str | None = None) -> Run:
        fields = body(approved=True, feedback=feedback)
        return await self._send("POST", f"/api/runs/{seg(run_id)}/approve", Run, json=fields)

    async def reject(self, run_id: str, feedback: str | None = None) -> Run:
        fields = body(approved=False, feedback=feedback)
        return await self._send("POST", f"/api/runs/{seg(run_id)}/approve", Run, json=fields)

    async def revise(self, run_id: str, feedback: str) -> Run:
        """Send the plan back for a new version with `feedback` (a reject that does not end the run)."""
        fields = body(approved=False, feedback=feedback, revise=True)
        return await self._send("POST", f"/api/runs/{seg(run_id)}/approve", Run, json=fields)

    async def cancel(self, run_id: str, reason: str | None = None) -> Run:
        return await self._send("POST", f"/api/runs/{seg(run_id)}/cancel", Run, json=body(reason=reason))

    async def logs(self, run_id: str, since: int = 0, limit: int = 100) -> EventPage:
        params = query(since=since, limit=limit)
        raw = await self._send("GET", f"/api/runs/{seg(run_id)}/logs", _RawPage, params=params)
        events = [parse_frame(bytes(item)) for item in raw.items]
        return EventPage([e for e in events if e is not None], raw.total)

    async def all_logs(self, run_id: str, since: int = 0) -> list[RunEvent]:
        """Every stored event of the run with `seq > since`, in order (as many pages as it takes)."""
        out: list[RunEvent] = []
        while True:
            page = await self.logs(run_id, since, 1000)
            out.extend(page.items)
            if len(page.items) < 1000:
                return out
            since = page.items[-1].seq

    async def artifacts(self, run_id: str) -> list[ArtifactInfo]:
        return await self._send("GET", f"/api/runs/{seg(run_id)}/artifacts", list[ArtifactInfo])

    async def download(self, run_id: str, name: str) -> bytes:
        return await self._send("GET", f"/api/runs/{seg(run_id)}/artifacts/{seg(name)}", bytes)

    # approvals
    async def list_approvals(
        self,
        status: str | None = None,
        task_id: str | None = None,
        skip: int = 0,
        limit: int = 10,
        cursor: str | None = None,
    ) -> Page[ApprovalItem]:
        params = query(status=status, task_id=task_id, skip=skip, limit=limit, cursor=cursor)
        return await self._send("GET", "/api/approvals", Page[ApprovalItem], params=params)

    async def get_approval(self, approval_id: str) -> ApprovalItem:
        return await self._send("GET", f"/api/approvals/{seg(approval_id)}", ApprovalItem)

    # metrics
    async def list_metrics(
        self,
        task_id: str | None = None,
        run_id: str | None = None,
        name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        skip: int = 0,
        limit: int = 10,
    ) -> Page[MetricOut]:
        params = query(
            task_id=task_id, run_id=run_id, name=name, since=since, until=until, skip=skip, limit=limit
        )
        return await self._send("GET", "/api/metrics", Page[MetricOut], params=params)

    async def get_metric(self, metric_id: str) -> MetricOut:
        return await self._send("GET", f"/api/metrics/{seg(metric_id)}", MetricOut)

    async def task_summary(self, task_id: str) -> MetricsSummary:
        return await self._send("GET", f"/api/metrics/task/{seg(task_id)}/summary", MetricsSummary)

    async def run_summary(self, run_id: str) -> MetricsSummary:
        return await self._send("GET", f"/api/metrics/run/{seg(run_id)}/summary", MetricsSummary)

    async def summary(self, since: datetime | None = None, until: datetime | None = None) -> MetricsReport:
        params = query(since=since, until=until)
        return await self._send("GET", "/api/metrics/summary", MetricsReport, params=params)

    async def agent_summary(self, agent: str) -> MetricsReport:
        return await self._send("GET", f"/api/metrics/agent/{seg(agent)}/summary", MetricsReport)

    async def series(
        self,
        name: str,
        task_id: str | None = None,
        agent: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        bucket: str | None = None,
    ) -> MetricsSeries:
        params = query(name=name, task_id=task_id, agent=agent, since=since, until=until, bucket=bucket)
        return await self._send("GET", "/api/metrics/series", MetricsSeries, params=params)

    async def post_metric(
        self,
        run_id: str,
        name: str,
        value: float,
        metric_type: str | None = None,
        unit: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> MetricOut:
        fields = body(
            run_id=run_id, name=name, value=value, metric_type=metric_type, unit=unit, labels=labels
        )
        return await self._send("POST", "/api/metrics", MetricOut, json=fields)

    # people
    async def create_key(self, name: str, role: str, expires_at: datetime | None = None) -> NewKey:
        fields = body(name=name, role=role, expires_at=expires_at.isoformat() if expires_at else None)
        return await self._send("POST", "/api/keys", NewKey, json=fields)

    async def list_keys(
        self, skip: int = 0, limit: int = 10, cursor: str | None = None, revoked: bool | None = None
    ) -> Page[Key]:
        params = query(skip=skip, limit=limit, cursor=cursor, revoked=revoked)
        return await self._send("GET", "/api/keys", Page[Key], params=params)

    async def revoke_key(self, key_id: str) -> None:
        await self._send("DELETE", f"/api/keys/{seg(key_id)}", None)

    async def me(self) -> Me:
        return await self._send("GET", "/api/me", Me)

    async def audit(
        self,
        actor: str | None = None,
        action: str | None = None,
        target_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        skip: int = 0,
        limit: int = 10,
        cursor: str | None = None,
    ) -> Page[AuditItem]:
        params = query(
            actor=actor,
            action=action,
            target_id=target_id,
            since=since,
            until=until,
            skip=skip,
            limit=limit,
            cursor=cursor,
        )
        return await self._send("GET", "/api/audit", Page[AuditItem], params=params)

"""`agentbus approvals|metrics|keys`: the inbox, metrics summaries and series, API keys."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from agentbus.client.cli_common import JsonOpt, TokenOpt, UrlOpt, out, session, when

approvals = typer.Typer(no_args_is_help=True, help="Plans waiting for (or given) a decision.")
metrics = typer.Typer(no_args_is_help=True, help="Summaries and time series of run metrics.")
keys = typer.Typer(no_args_is_help=True, help="API keys (admin).")

Skip = Annotated[int, typer.Option(min=0, help="Items to skip.")]
Limit = Annotated[int, typer.Option(min=1, max=100, help="Items per page.")]


def table(columns: list[str], rows: list[list[Any]], total: int | None = None) -> None:
    t = Table(*columns, show_edge=False, pad_edge=False)
    for row in rows:
        t.add_row(*("-" if v is None else str(v) for v in row))
    out.print(t)
    if total is not None and total > len(rows):
        out.print(f"{len(rows)} of {total}", markup=False)


# approvals
@approvals.command("list")
def approvals_list(
    status: Annotated[str | None, typer.Option(help="pending, approved, rejected, ...")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task's.")] = None,
    skip: Skip = 0,
    limit: Limit = 10,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List approvals (`--status pending`: the inbox, oldest first)."""
    with session(url, token, as_json) as s:
        page = s.client.list_approvals(status=status, task_id=task, skip=skip, limit=limit)
        rows = [[a.id, a.run_id, a.status, a.plan_version, when(a.requested_at)] for a in page.items]
        s.emit(page, lambda p: table(["id", "run", "status", "version", "requested"], rows, p.total))


# metrics
def show_summary(summary: Any) -> None:
    runs_ = getattr(summary, "runs", None)
    if runs_ is not None:
        out.print(
            f"runs: {runs_.total} total, {runs_.completed} completed, {runs_.failed} failed, "
            f"success rate {runs_.success_rate}",
            markup=False,
        )
    rows = [[n, m.count, m.min, m.avg, m.p95, m.max, m.last] for n, m in sorted(summary.metrics.items())]
    table(["metric", "count", "min", "avg", "p95", "max", "last"], rows)


@metrics.command("summary")
def metrics_summary(
    task: Annotated[str | None, typer.Option(help="One task's metrics.")] = None,
    run: Annotated[str | None, typer.Option(help="One run's metrics.")] = None,
    agent: Annotated[str | None, typer.Option(help="One agent kind's metrics.")] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Summary of metrics: overall, or of one task, run or agent kind."""
    if sum(x is not None for x in (task, run, agent)) > 1:
        raise typer.BadParameter("give at most one of --task, --run, --agent")
    with session(url, token, as_json) as s:
        if task is not None:
            summary: Any = s.client.task_summary(task)
        elif run is not None:
            summary = s.client.run_summary(run)
        elif agent is not None:
            summary = s.client.agent_summary(agent)
        else:
            summary = s.client.summary()
        s.emit(summary, show_summary)


@metrics.command("series")
def metrics_series(
    name: str,
    task: Annotated[str | None, typer.Option(help="One task's.")] = None,
    agent: Annotated[str | None, typer.Option(help="One agent kind's.")] = None,
    bucket: Annotated[str | None, typer.Option(help="1m, 5m, 1h or 1d.")] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """A metric over time, in buckets."""
    with session(url, token, as_json) as s:
        series = s.client.series(name, task_id=task, agent=agent, bucket=bucket)
        rows = [[when(p.t), p.count, p.min, p.avg, p.p95, p.max] for p in series.points]
        s.emit(series, lambda _: table(["from", "count", "min", "avg", "p95", "max"], rows))


# keys
@keys.command("create")
def keys_create(
    name: str,
    role: Annotated[str, typer.Option(help="viewer, operator, approver or admin.")],
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create an API key; its secret is shown this once."""
    with session(url, token, as_json) as s:
        key = s.client.create_key(name, role)
        s.emit(key, lambda k: out.print(f"Key {k.id} ({k.role}): {k.key}", markup=False))


@keys.command("list")
def keys_list(
    skip: Skip = 0, limit: Limit = 10, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None
) -> None:
    """List API keys (never their secrets)."""
    with session(url, token, as_json) as s:
        page = s.client.list_keys(skip=skip, limit=limit)
        rows = [[k.id, k.name, k.role, when(k.created_at), when(k.expires_at)] for k in page.items]
        s.emit(page, lambda p: table(["id", "name", "role", "created", "expires"], rows, p.total))


@keys.command("revoke")
def keys_revoke(key_id: str, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Revoke an API key."""
    with session(url, token, as_json) as s:
        s.client.revoke_key(key_id)
        s.emit({"revoked": key_id}, lambda _: out.print(f"Revoked key {key_id}", markup=False))

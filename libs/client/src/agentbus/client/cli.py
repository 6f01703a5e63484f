"""`agentbus`: the gateway from a terminal or a script. Built on `agentbus.client.Client`.

Exit codes: 0 done (a run completed), 1 failed or error, 2 usage, 3 a run rejected, cancelled or
timed out, 4 not found or not allowed. `--json` prints one JSON document (JSON lines for watch).
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Annotated, Any

import typer

from agentbus.client.cli_admin import Limit, Skip, approvals, keys, metrics, table
from agentbus.client.cli_common import (
    JsonOpt,
    TokenOpt,
    UrlOpt,
    json_object,
    labels_of,
    out,
    session,
    when,
)
from agentbus.client.cli_watch import Watcher
from agentbus.client.events import as_dict

HELP = (
    "The agentbus gateway from a terminal or a script (AGENTBUS_URL, AGENTBUS_TOKEN). Exit codes: 0 done "
    "(a watched run completed), 1 failed or error, 2 usage, 3 a watched run rejected, cancelled or timed "
    "out, 4 not found or not allowed. --json on every command."
)
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help=HELP)
tasks = typer.Typer(no_args_is_help=True, help="Create, list, show, update and delete tasks.")
runs = typer.Typer(no_args_is_help=True, help="Start, follow, decide on and inspect runs.")
app.add_typer(tasks, name="tasks")
app.add_typer(runs, name="runs")
app.add_typer(approvals, name="approvals")
app.add_typer(metrics, name="metrics")
app.add_typer(keys, name="keys")

YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Approve the plan without asking.")]
NoPromptOpt = Annotated[bool, typer.Option("--no-prompt", help="Never ask; just watch.")]


def show_fields(value: Any, names: list[str]) -> None:
    for name in names:
        out.print(f"{name:>16}: {getattr(value, name, None)}", markup=False)


TASK_FIELDS = [
    "id",
    "name",
    "agent",
    "status",
    "require_approval",
    "total_runs",
    "success_rate",
    "created_at",
]
RUN_FIELDS = ["id", "task_id", "run_number", "status", "progress", "duration", "error_message", "created_at"]


def show_task(task: Any) -> None:
    show_fields(task, TASK_FIELDS)


def show_run(run: Any) -> None:
    show_fields(run, RUN_FIELDS)
    if run.plan:
        out.print(f"{'plan':>16}: {run.plan.get('steps', run.plan)}", markup=False)


# tasks
@tasks.command("create")
def tasks_create(
    name: str,
    description: Annotated[str | None, typer.Option(help="What the task is for.")] = None,
    agent: Annotated[str | None, typer.Option(help="Agent kind (server default when absent).")] = None,
    agent_config: Annotated[str | None, typer.Option(help="JSON object, e.g. '{\"steps\": 3}'.")] = None,
    config: Annotated[str | None, typer.Option(help="JSON object.")] = None,
    approval: Annotated[bool, typer.Option("--approval/--no-approval", help="Ask for approval.")] = True,
    approval_timeout: Annotated[int | None, typer.Option(help="Seconds to wait for a decision.")] = None,
    timeout: Annotated[int | None, typer.Option(help="Seconds for the whole run.")] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create a task."""
    fields = {
        "description": description,
        "agent": agent,
        "agent_config": json_object(agent_config, "--agent-config"),
        "config": json_object(config, "--config"),
        "require_approval": approval,
        "approval_timeout_s": approval_timeout,
        "timeout_s": timeout,
    }
    with session(url, token, as_json) as s:
        task = s.client.create_task(name, **{k: v for k, v in fields.items() if v is not None})
        s.emit(task, show_task)


@tasks.command("list")
def tasks_list(
    status: Annotated[str | None, typer.Option(help="Only tasks whose latest run has it.")] = None,
    skip: Skip = 0,
    limit: Limit = 10,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List tasks, newest first."""
    with session(url, token, as_json) as s:
        page = s.client.list_tasks(status=status, skip=skip, limit=limit)
        rows = [[t.id, t.name, t.agent, t.status, t.total_runs, when(t.created_at)] for t in page.items]
        s.emit(page, lambda p: table(["id", "name", "agent", "status", "runs", "created"], rows, p.total))


@tasks.command("show")
def tasks_show(task_id: str, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Show a task."""
    with session(url, token, as_json) as s:
        s.emit(s.client.get_task(task_id), show_task)


@tasks.command("update")
def tasks_update(
    task_id: str,
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    description: Annotated[str | None, typer.Option(help="New description.")] = None,
    agent: Annotated[str | None, typer.Option(help="Agent kind.")] = None,
    agent_config: Annotated[str | None, typer.Option(help="JSON object.")] = None,
    config: Annotated[str | None, typer.Option(help="JSON object.")] = None,
    approval: Annotated[bool | None, typer.Option("--approval/--no-approval", show_default=False)] = None,
    approval_timeout: Annotated[int | None, typer.Option(help="Seconds to wait for a decision.")] = None,
    timeout: Annotated[int | None, typer.Option(help="Seconds for the whole run.")] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Change some of a task's fields."""
    fields = {
        "name": name,
        "description": description,
        "agent": agent,
        "agent_config": json_object(agent_config, "--agent-config"),
        "config": json_object(config, "--config"),
        "require_approval": approval,
        "approval_timeout_s": approval_timeout,
        "timeout_s": timeout,
    }
    with session(url, token, as_json) as s:
        task = s.client.update_task(task_id, **{k: v for k, v in fields.items() if v is not None})
        s.emit(task, show_task)


@tasks.command("delete")
def tasks_delete(task_id: str, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Delete a task with its runs, events, artifacts and metrics."""
    with session(url, token, as_json) as s:
        s.client.delete_task(task_id)
        s.emit({"deleted": task_id}, lambda _: out.print(f"Deleted task {task_id}", markup=False))


# runs
@runs.command("start")
def runs_start(
    task_id: str,
    approval: Annotated[bool | None, typer.Option("--approval/--no-approval", show_default=False)] = None,
    agent_config: Annotated[str | None, typer.Option(help="JSON object overriding the task's.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="key=value (repeatable).")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Follow the run until it ends.")] = False,
    yes: YesOpt = False,
    no_prompt: NoPromptOpt = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Start a run of a task (`--watch`: follow it as `runs watch` does)."""
    config = json_object(agent_config, "--agent-config")
    labels = labels_of(label)
    with session(url, token, as_json) as s:
        run = s.client.start_run(task_id, require_approval=approval, agent_config=config, labels=labels)
        s.emit(
            run, lambda r: out.print(f"Started run {r.id} (#{r.run_number} of task {task_id})", markup=False)
        )
        if watch:
            code = Watcher(s.client, run.id, yes=yes, prompt=not no_prompt, as_json=as_json).run()
            raise typer.Exit(code)


@runs.command("watch")
def runs_watch(
    run_id: str,
    yes: YesOpt = False,
    no_prompt: NoPromptOpt = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Follow a run: its plan, a progress bar per step, and the approval prompt. Exit code: 0
    completed, 1 failed, 3 rejected, cancelled or timed out."""
    with session(url, token, as_json) as s:
        code = Watcher(s.client, run_id, yes=yes, prompt=not no_prompt, as_json=as_json).run()
    raise typer.Exit(code)


@runs.command("list")
def runs_list(
    task: Annotated[str | None, typer.Option(help="Only this task's runs.")] = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    skip: Skip = 0,
    limit: Limit = 10,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List runs, newest first."""
    with session(url, token, as_json) as s:
        page = s.client.list_runs(task_id=task, status=status, skip=skip, limit=limit)
        rows = [[r.id, r.task_id, r.run_number, r.status, r.progress, when(r.created_at)] for r in page.items]
        s.emit(page, lambda p: table(["id", "task", "#", "status", "progress", "created"], rows, p.total))


@runs.command("show")
def runs_show(run_id: str, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Show a run."""
    with session(url, token, as_json) as s:
        s.emit(s.client.get_run(run_id), show_run)


@runs.command("logs")
def runs_logs(
    run_id: str,
    since: Annotated[int, typer.Option(min=0, help="Only events with seq > since.")] = 0,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """A run's stored events, in order."""
    with session(url, token, as_json) as s:
        events = [as_dict(e) for e in s.client.all_logs(run_id, since=since)]

        def render(items: list[dict[str, Any]]) -> None:
            for e in items:
                out.print(f"{e['seq']} {e['event_type']} {e.get('message', '')}", markup=False)

        s.emit({"items": events, "total": len(events)}, lambda v: render(v["items"]))


def _decided(verb: str) -> Any:
    return lambda r: out.print(f"{verb} run {r.id} (status {r.status})", markup=False)


@runs.command("approve")
def runs_approve(
    run_id: str,
    feedback: Annotated[str | None, typer.Option(help="A note for the agent.")] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Approve the plan of a run waiting for approval."""
    with session(url, token, as_json) as s:
        s.emit(s.client.approve(run_id, feedback), _decided("Approved"))


@runs.command("reject")
def runs_reject(
    run_id: str,
    feedback: Annotated[str | None, typer.Option(help="Why.")] = None,
    revise: Annotated[bool, typer.Option(help="Send the plan back for a new version instead.")] = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Reject a run's plan (ends the run), or with --revise send it back with the feedback."""
    with session(url, token, as_json) as s:
        if revise:
            s.emit(s.client.revise(run_id, feedback or "please revise the plan"), _decided("Sent back"))
        else:
            s.emit(s.client.reject(run_id, feedback), _decided("Rejected"))


@runs.command("cancel")
def runs_cancel(
    run_id: str,
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cancel a run."""
    with session(url, token, as_json) as s:
        s.emit(s.client.cancel(run_id, reason), _decided("Cancelling"))


@runs.command("artifacts")
def runs_artifacts(run_id: str, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """List a run's artifacts."""
    with session(url, token, as_json) as s:
        items = s.client.artifacts(run_id)
        rows = [[a.name, a.size, a.content_type, when(a.created_at)] for a in items]
        s.emit(items, lambda _: table(["name", "size", "type", "created"], rows))


@runs.command("download")
def runs_download(
    run_id: str,
    name: str,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="File to write ('-': stdout) [default: NAME].")
    ] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Download an artifact of a run."""
    with session(url, token, as_json) as s:
        data = s.client.download(run_id, name)
        if output == "-":
            typer.get_binary_stream("stdout").write(data)
            return
        # Never where the server's name points: only its last part, in the current directory.
        target = Path(output) if output else Path(PurePath(name.replace("\\", "/")).name or "artifact")
        target.write_bytes(data)
        s.emit(
            {"path": str(target), "size": len(data)},
            lambda v: out.print(f"Wrote {v['path']} ({v['size']} bytes)", markup=False),
        )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130) from None


__all__ = ["app", "main"]

"""What every `agentbus` command shares: its options, output (text or `--json`), exit codes, and
the mapping of every error to a message and an exit code instead of a traceback."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.console import Console

from agentbus.client.errors import AgentbusError, ApiError
from agentbus.client.sync import Client

# Exit codes: 0 done (a run completed), 1 failed or error, 2 usage, 3 a run rejected, cancelled or
# timed out, 4 not found or not allowed (401/403/404).
OK, FAILED, USAGE, STOPPED, REFUSED = 0, 1, 2, 3, 4
EXIT_OF_TERMINAL_EVENT = {"completion": OK, "failure": FAILED}
EXIT_OF_STATUS = {"completed": OK, "failed": FAILED}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document (JSON lines for watch).")]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", envvar="AGENTBUS_URL", help="Gateway URL [default: http://127.0.0.1:8000]."),
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="AGENTBUS_TOKEN", help="API key or JWT.", show_default=False)
]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")


class Session:
    """One command's client and output mode."""

    def __init__(self, url: str | None, token: str | None, as_json: bool) -> None:
        self.as_json = as_json
        self.client = Client(url, token)

    def emit(self, value: Any, render: Callable[[Any], None] | None = None) -> None:
        if self.as_json or render is None:
            print_json(value)
        else:
            render(value)


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(msgspec.to_builtins(value)).decode() + "\n")
    sys.stdout.flush()


def fail(message: str, code: int, as_json: bool, status_code: int | None = None) -> typer.Exit:
    """The error on stderr (with --json, also `{status_code, detail}` on stdout) and the exit."""
    if as_json:
        print_json({"status_code": status_code, "detail": message})
    suffix = f" (HTTP {status_code})" if status_code else ""
    err.print(f"error: {message}{suffix}", markup=False)
    return typer.Exit(code)


@contextmanager
def session(url: str | None, token: str | None, as_json: bool) -> Iterator[Session]:
    """A Session whose errors end the command with their exit code and a one-line message."""
    try:
        s = Session(url, token, as_json)
    except AgentbusError as exc:
        raise fail(str(exc), USAGE, as_json) from None
    try:
        yield s
    except ApiError as exc:
        code = REFUSED if exc.status_code in (401, 403, 404) else FAILED
        raise fail(exc.detail, code, as_json, exc.status_code) from None
    except AgentbusError as exc:
        raise fail(str(exc), FAILED, as_json) from None
    except OSError as exc:  # a file it was asked to write
        raise fail(str(exc), FAILED, as_json) from None
    finally:
        s.client.close()


def json_object(text: str | None, option: str) -> dict[str, Any] | None:
    """A JSON object given on the command line (`--agent-config '{"steps": 3}'`)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint=option) from None
    if not isinstance(value, dict):
        raise typer.BadParameter("a JSON object is expected", param_hint=option)
    return value


def labels_of(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not key=value", param_hint="--label")
        out[key] = value
    return out


def when(value: Any) -> str:
    return "-" if value is None else str(value)[:19].replace("T", " ")

"""Logging for every service: JSON lines for machines, readable lines for a person.

`setup_logging(service, level, fmt)`: `fmt` (`LOG_FORMAT`) is `json`, `text`, or `auto` (the
default): text when stderr is a terminal, JSON lines otherwise (files, pipes, containers).

A line about a run carries its `task_id`, `run_id` and `trace_id`: from `run_context(...)`, a
context variable set where a run is handled (asyncio tasks inherit it), or from `extra=` on
the call (`log.info("...", extra=run_fields(task_id, run_id))`). Never log credentials,
tokens, keys or request headers: nothing here filters them.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

__all__ = ["RUN_FIELDS", "bind_run", "run_context", "run_fields", "setup_logging", "trace_id_of"]

RUN_FIELDS = ("task_id", "run_id", "trace_id")

# (task_id, run_id, trace_id) of the run being handled, or None.
_run: contextvars.ContextVar[tuple[str | None, str | None, str | None] | None] = contextvars.ContextVar(
    "agentbus_log_run", default=None
)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), or None."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def run_fields(task_id: str | None, run_id: str | None, traceparent: str | None = None) -> dict[str, Any]:
    """The `extra=` of a log call about a run."""
    return {"task_id": task_id, "run_id": run_id, "trace_id": trace_id_of(traceparent)}


@contextmanager
def run_context(task_id: str | None, run_id: str | None, traceparent: str | None = None) -> Iterator[None]:
    """Every line logged inside (this task and the tasks it starts) is about this run."""
    token = _run.set((task_id, run_id, trace_id_of(traceparent)))
    try:
        yield
    finally:
        _run.reset(token)


def bind_run(task_id: str | None, run_id: str | None, traceparent: str | None = None) -> None:
    """Like `run_context`, for the rest of the current task (one that handles a single run)."""
    _run.set((task_id, run_id, trace_id_of(traceparent)))


def _run_of(record: logging.LogRecord) -> dict[str, Any]:
    bound = _run.get()
    out: dict[str, Any] = {}
    for i, name in enumerate(RUN_FIELDS):
        value = getattr(record, name, None)
        if value is None and bound is not None:
            value = bound[i]
        if value is not None:
            out[name] = value
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (UTC), level, service, logger, msg, the run's ids, exc."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self._encode = msgspec.json.Encoder(enc_hook=str).encode

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_run_of(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return self._encode(line).decode()


class TextFormatter(logging.Formatter):
    """`time service LEVEL logger: message  run_id=... task_id=...`."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        ids = _run_of(record)
        if ids:
            text += "  " + " ".join(f"{k}={v}" for k, v in ids.items())
        return text


def _json_wanted(fmt: str | None) -> bool:
    fmt = (fmt or os.environ.get("LOG_FORMAT") or "auto").strip().lower()
    if fmt in ("json", "text"):
        return fmt == "json"
    isatty = getattr(sys.stderr, "isatty", None)
    return not (isatty is not None and isatty())


def setup_logging(service: str, level: str | None = None, fmt: str | None = None) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service) if _json_wanted(fmt) else TextFormatter(service))
    logging.basicConfig(level=(level or os.environ.get("LOG_LEVEL", "INFO")).upper(), handlers=[handler])
    # nats.py logs every reconnect attempt at ERROR; our callbacks already say it once.
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)

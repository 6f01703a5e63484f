"""OpenTelemetry traces across the services, off unless the standard `OTEL_*` variables ask.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` keeps it off. `OTEL_SERVICE_NAME` names the process (default: the
service's). `console` writes one JSON object per finished span, to stdout or to the file named by
`AGENTBUS_TRACES_FILE` (`{service}` in it is replaced by the service name; the end-to-end tests
read those).

A trace crosses NATS in W3C trace context: the `traceparent` message header, and the run's
`RunStart.traceparent` (stored with the run, so a runner that resumes it later joins the same
trace). Off, nothing is created: callers test `tracing.enabled()` (a module attribute read)
before making a span or a header.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

__all__ = ["begin", "enabled", "headers", "setup_tracing", "span", "traceparent"]

TRACEPARENT = "traceparent"
_NULL: AbstractContextManager[Any] = nullcontext()


class _State:
    on = False
    tracer: Any = None
    propagator: Any = None


_state = _State()  # set once by setup_tracing at start; read on every guarded call


def enabled() -> bool:
    return _state.on


def _wanted(environ: Mapping[str, str]) -> str | None:
    """The exporter to use, or None (off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return None if exporter == "none" else exporter.split(",")[0].strip()
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return None


def setup_tracing(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Start tracing when the environment asks for it; True when it is on."""
    environ = os.environ if environ is None else environ
    exporter_name = _wanted(environ)
    if exporter_name is None:
        _state.on = False
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    name = environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    if exporter_name == "console":
        path = environ.get("AGENTBUS_TRACES_FILE", "").replace("{service}", name)
        out = open(path, "a", buffering=1) if path else None
        exporter = ConsoleSpanExporter(
            service_name=name,
            formatter=lambda s: s.to_json(indent=None) + "\n",
            **({"out": out} if out else {}),
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter_name}: use otlp, console or none")
    trace.set_tracer_provider(provider)
    _state.tracer = trace.get_tracer("agentbus")
    _state.propagator = TraceContextTextMapPropagator()
    _state.on = True
    return True


def _context(parent: str | Mapping[str, str] | None) -> Any:
    if parent is None:
        return None
    carrier = {TRACEPARENT: parent} if isinstance(parent, str) else parent
    return _state.propagator.extract(carrier)


def span(
    name: str,
    *,
    parent: str | Mapping[str, str] | None = None,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Any]:
    """A span as a context manager (the current one inside), child of `parent` (a traceparent or
    message headers) when given, else of the current span. Off: a shared no-op context."""
    if not _state.on:
        return _NULL
    from opentelemetry.trace import SpanKind

    return _state.tracer.start_as_current_span(
        name,
        context=_context(parent),
        kind=getattr(SpanKind, kind.upper()),
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
    )


def traceparent() -> str | None:
    """The current span's W3C traceparent, or None (off, or no span)."""
    if not _state.on:
        return None
    carrier: dict[str, str] = {}
    _state.propagator.inject(carrier)
    return carrier.get(TRACEPARENT)


def headers(into: dict[str, str]) -> dict[str, str]:
    """`into` with the current traceparent added (when tracing is on and a span is current)."""
    if _state.on:
        _state.propagator.inject(into)
    return into


def begin(name: str, *, parent: Mapping[str, str] | None, attributes: Mapping[str, Any] | None = None) -> Any:
    """A started span that is not made current (the caller ends it), child of the traceparent in
    `parent` (message headers); None when tracing is off or the headers carry none."""
    if not _state.on or not parent or TRACEPARENT not in parent:
        return None
    return _state.tracer.start_span(
        name,
        context=_context(parent),
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
    )

"""OpenTelemetry tracing, off by default.

``configure(service, settings)`` installs a tracer provider when ``FEEDSERVE_OTLP_ENDPOINT``
(an OTLP/HTTP collector, e.g. ``http://otel-collector:4318/v1/traces``) or
``FEEDSERVE_TRACE_FILE`` (JSON lines, for local debugging and tests) is set; otherwise the
API's no-op tracer makes every span free. Spans: the gateway request, each workflow step,
each Triton call, and each Celery task, whose context travels in the task message's headers
(W3C ``traceparent``), so one trace covers gateway → featurizer worker → Triton.

Span attributes carry ids of models and steps, never member data or keys.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

tracer = trace.get_tracer("feedserve")

_configured = threading.Lock()
_done = False


class JsonLinesExporter:
    """Finished spans as one JSON object per line in ``path`` (appends; thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = []
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": format(ctx.trace_id, "032x"),
                        "span_id": format(ctx.span_id, "016x"),
                        "parent_id": format(parent.span_id, "016x") if parent else None,
                        "service": span.resource.attributes.get("service.name"),
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": dict(span.attributes or {}),
                    }
                )
            )
        with self._lock, self.path.open("a") as f:
            f.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def configure(service: str, otlp_endpoint: str = "", trace_file: str = "") -> bool:
    """Install the process's tracer provider (once); False when tracing stays off."""
    global _done
    if not (otlp_endpoint or trace_file):
        return False
    with _configured:
        if _done:
            return True
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint))
            )
        if trace_file:
            exporter = JsonLinesExporter(Path(trace_file))
            provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[arg-type]
        trace.set_tracer_provider(provider)
        _done = True
    return True


def inject() -> dict[str, str]:
    """The current trace context as message headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def continued(headers: Mapping[str, Any] | None, name: str, **attributes: Any) -> Iterator[Any]:
    """A span ``name`` continuing the trace in ``headers`` (e.g. a Celery task's)."""
    carrier = {k: str(v) for k, v in (headers or {}).items() if isinstance(v, str | bytes)}
    token = otel_context.attach(propagate.extract(carrier))
    try:
        with tracer.start_as_current_span(name, kind=trace.SpanKind.CONSUMER) as span:
            for key, value in attributes.items():
                span.set_attribute(key, value)
            yield span
    finally:
        otel_context.detach(token)


def start(name: str, **attributes: Any) -> tuple[Any, object]:
    """Start span ``name`` as the current one (``end`` it with the returned token)."""
    span = tracer.start_span(name, attributes=attributes)
    return span, otel_context.attach(trace.set_span_in_context(span))


def end(span: Any, token: object, **attributes: Any) -> None:
    for key, value in attributes.items():
        span.set_attribute(key, value)
    span.end()
    otel_context.detach(token)  # type: ignore[arg-type]

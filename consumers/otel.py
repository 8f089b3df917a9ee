"""The OpenTelemetry adapter of the ``Tracer`` port (the ``otel`` extra)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agentstream.core.tracing import TRACEPARENT, AttributeValue, Span

_propagator = TraceContextTextMapPropagator()


class _OTelSpan:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def record_error(self, message: str) -> None:
        self._span.set_status(Status(StatusCode.ERROR, message))


class OTelTracer:
    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("agentstream", tracer_provider=provider)

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        traceparent: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Iterator[Span]:
        parent: Context | None = _propagator.extract({TRACEPARENT: traceparent}) if traceparent else None
        with self._tracer.start_as_current_span(
            name, context=parent, attributes=dict(attributes or {})
        ) as span:
            yield _OTelSpan(span)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (what an HTTP view puts in the run's metadata)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT)

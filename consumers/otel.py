"""The OpenTelemetry adapter of the ``Tracer`` port (the ``otel`` extra)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agentstream.core.tracing import TRACEPARENT, AttributeValue, Span, SpanKind

_propagator = TraceContextTextMapPropagator()
_SPAN_KINDS = {"llm": trace.SpanKind.CLIENT}
_entered: ContextVar[object | None] = ContextVar("agentstream_otel_span_entered", default=None)


class _OTelSpan:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def record_error(self, message: str) -> None:
        self._span.set_status(Status(StatusCode.ERROR, message))

    def record_warning(self, message: str) -> None:
        # OpenTelemetry has no "warning" status: the span stays unset, the reason is an attribute
        self._span.set_attribute("agentstream.status_message", message)

    def record_content(self, *, input: Any = None, output: Any = None) -> None:
        # the GenAI semantic conventions' opt-in content attributes, as JSON
        if input is not None:
            self._span.set_attribute("gen_ai.input.messages", _json(input))
        if output is not None:
            self._span.set_attribute("gen_ai.output.messages", _json(output))


class OTelTracer:
    def __init__(
        self, provider: trace.TracerProvider | None = None, *, capture_content: bool = False
    ) -> None:
        self._tracer = trace.get_tracer("agentstream", tracer_provider=provider)
        self.capture_content = capture_content

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = "internal",
        traceparent: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Iterator[Span]:
        parent: Context | None = (
            _propagator.extract({TRACEPARENT: traceparent}) if traceparent else _open_parent()
        )
        span = self._tracer.start_span(
            name,
            context=parent,
            kind=_SPAN_KINDS.get(kind, trace.SpanKind.INTERNAL),
            attributes=dict(attributes or {}),
        )
        # start_as_current_span, except at the end: a span held across an async generator's
        # yields (a streamed LLM call) and abandoned by its reader is ended later in another
        # context, where detaching fails; the span is ended all the same, and nothing is logged
        token = otel_context.attach(trace.set_span_in_context(span))
        mark = _entered.set(object())
        try:
            yield _OTelSpan(span)
        except Exception as exc:  # as OpenTelemetry's own: BaseExceptions (cancels) are no errors
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            span.end()
            try:
                _entered.reset(mark)
            except ValueError:
                pass  # another context: ours is not current here, nothing to detach
            else:
                otel_context.detach(token)

    def flush(self) -> None:
        pass  # the provider is the application's: it flushes it (and it is not ours to shut down)


def _open_parent() -> Context | None:
    """The current context, unless its span has ended (abandoned, see ``span``): then its parent."""
    current = trace.get_current_span()
    if getattr(current, "end_time", None) is None:  # open, remote, or no span at all
        return None
    parent = getattr(current, "parent", None)
    return trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else Context()


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (what an HTTP view puts in the run's metadata)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT)


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()

"""The ``Tracer`` port: spans for run attempts, LLM calls and tools, and W3C trace context.

A span started with ``traceparent=`` (the header of the HTTP request that created the run, kept
in the run's ``run.queued`` metadata) joins the caller's trace; a span started without it is a
child of the current one (context variables, so it follows asyncio tasks). ``NoopTracer`` is the
default and costs one object; the OpenTelemetry adapter is ``agentstream.consumers.otel``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Protocol

AttributeValue = str | int | float | bool
TRACEPARENT = "traceparent"  # the metadata key (and the HTTP header) that carries the caller's trace
TRACERS = ("noop", "otel")


class Span(Protocol):
    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def record_error(self, message: str) -> None: ...


class Tracer(Protocol):
    def span(
        self,
        name: str,
        *,
        traceparent: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> contextlib.AbstractContextManager[Span]: ...


class _NoopSpan:
    def set_attribute(self, key: str, value: AttributeValue) -> None:
        pass

    def record_error(self, message: str) -> None:
        pass


_NOOP_SPAN = _NoopSpan()


class NoopTracer:
    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        traceparent: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Iterator[Span]:
        yield _NOOP_SPAN

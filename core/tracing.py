"""The ``Tracer`` port: spans for run attempts, LLM calls and tools, and W3C trace context.

A span started with ``traceparent=`` (the header of the HTTP request that created the run, kept
in the run's ``run.queued`` metadata) joins the caller's trace; a span started without it is a
child of the current one (context variables, so it follows asyncio tasks). ``kind`` says what a
span is: ``attempt`` (one attempt of a run; its attributes carry ``agentstream.run_id``,
``agentstream.attempt``, ``agentstream.agent_key``, ``agentstream.worker_id``), ``llm`` (a model
call: ``gen_ai.*`` attributes for model and token usage), ``tool``, or ``internal``.

How a span ended: nothing for success, ``record_error`` for a failure (failed, timed out, an
attempt that will be retried), ``record_warning`` for an end short of success that is no fault
(cancelled, handed to another worker). Bodies (messages, outputs, tool arguments) reach a span only
through ``record_content`` and only when the tracer's ``capture_content`` is on (``TRACE_CONTENT``).

``NoopTracer`` is the default and costs one object; the adapters are ``agentstream.consumers.otel``
(OpenTelemetry) and ``agentstream.consumers.langfuse_tracing`` (Langfuse).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Protocol

AttributeValue = str | int | float | bool
SpanKind = Literal["attempt", "llm", "tool", "internal"]
TRACEPARENT = "traceparent"  # the metadata key (and the HTTP header) that carries the caller's trace
TRACERS = ("noop", "otel", "langfuse")


class Span(Protocol):
    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def record_error(self, message: str) -> None: ...

    def record_warning(self, message: str) -> None: ...

    def record_content(self, *, input: Any = None, output: Any = None) -> None: ...


class Tracer(Protocol):
    # True: LLM and tool spans get their messages / arguments / outputs (record_content)
    capture_content: bool

    def span(
        self,
        name: str,
        *,
        kind: SpanKind = "internal",
        traceparent: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> contextlib.AbstractContextManager[Span]: ...

    def flush(self) -> None:
        """Send what is buffered (a worker calls it before it exits)."""
        ...


class _NoopSpan:
    def set_attribute(self, key: str, value: AttributeValue) -> None:
        pass

    def record_error(self, message: str) -> None:
        pass

    def record_warning(self, message: str) -> None:
        pass

    def record_content(self, *, input: Any = None, output: Any = None) -> None:
        pass


NOOP_SPAN: Span = _NoopSpan()  # what a span that cannot be traced is


class NoopTracer:
    capture_content = False

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = "internal",
        traceparent: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Iterator[Span]:
        yield NOOP_SPAN

    def flush(self) -> None:
        pass

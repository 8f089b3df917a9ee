"""The Langfuse adapter of the ``Tracer`` port (the ``langfuse`` extra: the SDK v3 and later).

**One Langfuse trace per run, each attempt an observation in it.** A retried run, or one reclaimed
by another worker after a crash, is one unit to look at, and every worker finds the same trace
without talking to the others: its id is the trace id of the run's ``traceparent`` when the
request that created the run carried one (so Langfuse and OpenTelemetry show the same trace), else
a hash of the run id. The attempt is an ``agent`` observation; LLM calls under it are
``generation`` observations (model, input/output token usage), tools ``tool`` observations.

**The real status**, not "completed" for everything: a failed, timed-out or to-be-retried attempt,
a failed LLM call or tool gets level ``ERROR`` and the reason as ``status_message``; a cancelled or
handed-back attempt ``WARNING``; success ``DEFAULT``. Message bodies, outputs and tool arguments
are sent only when ``TRACE_CONTENT`` is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from agentstream.core.tracing import AttributeValue, Span, SpanKind

# The SDK's observation objects (LangfuseSpan, LangfuseGeneration, ...): start_observation(),
# update(), end(). Its overloads per observation type do not fit a small Protocol, hence Any.
Observation = Any

_AS_TYPE: dict[str, str] = {"attempt": "agent", "llm": "generation", "tool": "tool", "internal": "span"}
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_USAGE = {"gen_ai.usage.input_tokens": "input", "gen_ai.usage.output_tokens": "output"}
_current: ContextVar[_LangfuseSpan | None] = ContextVar("agentstream_langfuse_observation", default=None)
MAX_STATUS_CHARS = 500


class _LangfuseSpan:
    """Collects what the span learns and sends it in one ``update`` when it ends."""

    def __init__(
        self, observation: Observation, metadata: dict[str, AttributeValue], parent: _LangfuseSpan | None
    ) -> None:
        self.observation = observation
        self.metadata = metadata
        self.parent = parent
        self.ended = False
        self.fields: dict[str, Any] = {}
        self.usage: dict[str, int] = {}

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if key in _USAGE:
            self.usage[_USAGE[key]] = int(value)
        elif key == "gen_ai.response.model":
            self.fields["model"] = str(value)
        else:
            self.metadata[key] = value
            self.fields["metadata"] = self.metadata

    def record_error(self, message: str) -> None:
        self.fields.update(level="ERROR", status_message=message[:MAX_STATUS_CHARS])

    def record_warning(self, message: str) -> None:
        if self.fields.get("level") != "ERROR":  # an error is never downgraded
            self.fields.update(level="WARNING", status_message=message[:MAX_STATUS_CHARS])

    def record_content(self, *, input: Any = None, output: Any = None) -> None:
        if input is not None:
            self.fields["input"] = input
        if output is not None:
            self.fields["output"] = output

    def end(self) -> None:
        self.ended = True
        if self.usage:
            self.fields["usage_details"] = {**self.usage, "total": sum(self.usage.values())}
        if self.fields:
            self.observation.update(**self.fields)
        self.observation.end()


class LangfuseTracer:
    """``client`` is a ``langfuse.Langfuse`` (see ``langfuse_tracer`` for one built from settings)."""

    def __init__(self, client: Any, *, capture_content: bool = False) -> None:
        self.client = client
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
        metadata = dict(attributes or {})
        fields: dict[str, Any] = {"name": name, "as_type": _AS_TYPE[kind], "metadata": metadata or None}
        if kind == "llm" and metadata.get("gen_ai.request.model"):
            fields["model"] = str(metadata["gen_ai.request.model"])
        parent = _current.get()
        # A span held across an async generator's yields (a streamed LLM call) and abandoned by
        # its reader ends later, in another context, leaving itself current in the reader's:
        # its children-to-be belong to the nearest span still open.
        while parent is not None and parent.ended:
            parent = parent.parent
        if kind == "attempt" or parent is None:
            observation = self.client.start_observation(
                trace_context=_trace_context(traceparent, metadata), **fields
            )
        else:
            observation = parent.observation.start_observation(**fields)
        span = _LangfuseSpan(observation, metadata, parent)
        token = _current.set(span)
        try:
            yield span
        except asyncio.CancelledError:
            span.record_warning("cancelled")
            raise
        except Exception as exc:
            span.record_error(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            span.end()  # first: an observation never ended is never sent
            with contextlib.suppress(ValueError):  # ended in another context (see above)
                _current.reset(token)

    def flush(self) -> None:
        self.client.flush()


def _trace_context(
    traceparent: str | None, attributes: Mapping[str, AttributeValue]
) -> dict[str, str] | None:
    """The caller's trace (and parent span) from a valid ``traceparent``; else one trace per run."""
    found = _TRACEPARENT.match(traceparent or "")
    if found:
        return {"trace_id": found.group(1), "parent_span_id": found.group(2)}
    run_id = attributes.get("agentstream.run_id")
    if run_id is None:
        return None  # not a run's span: a trace of its own
    return {"trace_id": run_trace_id(str(run_id))}


def run_trace_id(run_id: str) -> str:
    """The Langfuse trace id of a run that carries no ``traceparent`` (32 hex digits, as W3C's)."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]

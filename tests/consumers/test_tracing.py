"""Tracing: a span per attempt that joins the caller's trace, with child spans for LLM calls and
tools, checked with the OpenTelemetry in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentstream.consumers.llm import get_llm_client, stream_completion
from agentstream.consumers.llm.traced import TracedLLMClient
from agentstream.consumers.otel import OTelTracer
from agentstream.consumers.registry import RuntimeRegistry
from agentstream.consumers.runtime import AgentRuntime, RunResult
from agentstream.consumers.tools import ToolRegistry
from agentstream.consumers.tracing import current_tracer, tracer_for, use_tracer
from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, SubmitRequest
from agentstream.core.tracing import NoopTracer
from tests.consumers.helpers import burst

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


class Traced(AgentRuntime):
    key = "traced"

    async def run(self, ctx: object) -> RunResult:
        llm = get_llm_client("fake", settings=Settings())
        await stream_completion(ctx, llm, [{"role": "user", "content": "hi"}])  # type: ignore[arg-type]
        await llm.generate([{"role": "user", "content": "again"}])
        total = await ToolRegistry([add]).execute("add", {"a": 1, "b": 2})
        return RunResult(final_output={"sum": total})


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer(OTelTracer(provider))
    yield exporter
    use_tracer(NoopTracer())
    provider.shutdown()


def registry() -> RuntimeRegistry:
    found = RuntimeRegistry()
    found.register(Traced())
    return found


def by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def test_the_attempt_span_joins_the_callers_trace_and_llm_and_tool_spans_are_its_children(
    wstore: EventStore, exporter: InMemorySpanExporter
) -> None:
    run_id = (
        await wstore.submit(SubmitRequest("traced", "user:1", metadata={"traceparent": TRACEPARENT}))
    ).run_id
    await burst(wstore, registry=registry())

    spans = exporter.get_finished_spans()
    [attempt] = by_name(spans, "run traced")
    assert attempt.context is not None and attempt.parent is not None
    assert format(attempt.context.trace_id, "032x") == TRACE_ID
    assert format(attempt.parent.span_id, "016x") == CALLER_SPAN_ID
    assert attempt.parent.is_remote
    assert attempt.attributes is not None
    assert attempt.attributes["agentstream.run_id"] == run_id
    assert attempt.attributes["agentstream.attempt"] == 1
    assert attempt.attributes["agentstream.outcome"] == "succeeded"

    llm_spans, tool_spans = by_name(spans, "llm "), by_name(spans, "tool add")
    assert len(llm_spans) == 2 and len(tool_spans) == 1
    for child in (*llm_spans, *tool_spans):
        assert child.parent is not None and child.parent.span_id == attempt.context.span_id
        assert child.context is not None and child.context.trace_id == attempt.context.trace_id
    assert all(s.attributes and s.attributes["gen_ai.system"] == "fake" for s in llm_spans)
    assert all(s.attributes and s.attributes["gen_ai.usage.output_tokens"] > 0 for s in llm_spans)  # type: ignore[operator]


async def test_a_run_without_a_traceparent_starts_a_trace_of_its_own(
    wstore: EventStore, exporter: InMemorySpanExporter
) -> None:
    await wstore.submit(SubmitRequest("traced", "user:1"))
    await burst(wstore, registry=registry())
    [attempt] = by_name(exporter.get_finished_spans(), "run traced")
    assert attempt.parent is None


def test_the_noop_tracer_is_the_default_and_leaves_llm_clients_unwrapped() -> None:
    assert isinstance(current_tracer(), NoopTracer)
    assert not isinstance(get_llm_client("fake", settings=Settings()), TracedLLMClient)
    with pytest.raises(ConfigurationError, match="noop, otel, langfuse"):
        tracer_for("zipkin")


def test_the_traceparent_is_not_part_of_an_idempotent_requests_fingerprint() -> None:
    one = SubmitRequest("a", "user:1", metadata={"traceparent": TRACEPARENT, "k": 1}, idempotency_key="x")
    other = SubmitRequest(
        "a", "user:1", metadata={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "k": 1}
    )
    assert one.fingerprint() == other.fingerprint()
    assert one.fingerprint() != SubmitRequest("a", "user:1", metadata={"k": 2}).fingerprint()


async def test_a_failed_attempt_span_is_an_error_with_the_reason_and_bodies_stay_out_by_default(
    wstore: EventStore, exporter: InMemorySpanExporter
) -> None:
    from opentelemetry.trace import StatusCode

    from tests.consumers.agents import Permanent

    found = registry()
    found.register(Permanent())
    await wstore.submit(SubmitRequest("permanent", "user:1"))
    await wstore.submit(SubmitRequest("traced", "user:1"))
    await burst(wstore, registry=found)

    spans = exporter.get_finished_spans()
    [failed] = by_name(spans, "run permanent")
    assert failed.status.status_code is StatusCode.ERROR
    assert "failed: " in str(failed.status.description) and "the prompt is invalid" in str(
        failed.status.description
    )
    assert not [s.name for s in spans if s.attributes and "gen_ai.input.messages" in s.attributes]


async def test_with_trace_content_llm_spans_carry_the_messages_and_the_answer(wstore: EventStore) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer(OTelTracer(provider, capture_content=True))
    try:
        await wstore.submit(SubmitRequest("traced", "user:1"))
        await burst(wstore, registry=registry())
    finally:
        use_tracer(NoopTracer())
        provider.shutdown()
    llm_spans = by_name(exporter.get_finished_spans(), "llm ")
    assert len(llm_spans) == 2
    for span in llm_spans:
        assert span.attributes is not None
        assert '"role":"user"' in str(span.attributes["gen_ai.input.messages"])
        assert '"role":"assistant"' in str(span.attributes["gen_ai.output.messages"])

"""An LLM stream its reader stops reading (``break``, an exception in the loop body) is closed
later by the event loop, in another context. Its span is still ended and exported, the reader's
next spans are children of the attempt (not of the abandoned LLM span), and nothing is logged as
an error — on the OpenTelemetry and the Langfuse adapters alike."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentstream.consumers.llm import get_llm_client
from agentstream.consumers.otel import OTelTracer
from agentstream.consumers.tools import ToolRegistry
from agentstream.consumers.tracing import current_tracer, use_tracer
from agentstream.core.settings import Settings
from agentstream.core.tracing import NoopTracer

Exported = Callable[[], list[ReadableSpan]]


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@pytest.fixture(params=["otel", "langfuse"])
def exported(request: pytest.FixtureRequest) -> Iterator[Exported]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    if request.param == "otel":
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        use_tracer(OTelTracer(provider))
        yield lambda: list(exporter.get_finished_spans())
        use_tracer(NoopTracer())
        provider.shutdown()
        return
    langfuse = pytest.importorskip("langfuse")
    from agentstream.consumers.langfuse_tracing import LangfuseTracer

    client = langfuse.Langfuse(
        public_key=f"pk-lf-{uuid.uuid4().hex}",
        secret_key="sk-lf-test",
        host="http://127.0.0.1:9",  # never contacted
        span_exporter=exporter,
        tracer_provider=provider,
    )
    use_tracer(LangfuseTracer(client))

    def spans() -> list[ReadableSpan]:
        client.flush()
        return list(exporter.get_finished_spans())

    yield spans
    use_tracer(NoopTracer())
    client.shutdown()


async def test_an_abandoned_llm_stream_still_ends_its_span_and_the_next_spans_are_the_attempts(
    exported: Exported, caplog: pytest.LogCaptureFixture
) -> None:
    llm = get_llm_client("fake", settings=Settings())
    tracer = current_tracer()
    with (
        caplog.at_level(logging.WARNING),
        tracer.span("run a", kind="attempt", attributes={"agentstream.run_id": "r1"}),
    ):
        async for _ in llm.stream([{"role": "user", "content": "hi"}]):
            break  # the reader has what it wanted
        for _ in range(100):  # the loop closes the dropped generator in a task of its own
            if any(s.name.startswith("llm") for s in exported()):
                break
            await asyncio.sleep(0)
        assert await ToolRegistry([add]).execute("add", {"a": 1, "b": 2}) == 3
    spans = {s.name.split()[0]: s for s in exported()}
    assert set(spans) >= {"run", "llm", "tool"}
    attempt = spans["run"].context.span_id
    assert spans["llm"].parent is not None and spans["llm"].parent.span_id == attempt
    assert spans["tool"].parent is not None and spans["tool"].parent.span_id == attempt
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

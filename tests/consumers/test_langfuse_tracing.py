"""The Langfuse adapter, checked on the real SDK with no network: its OpenTelemetry pipeline exports
to an in-memory exporter, and we assert on exactly what Langfuse would have received."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentstream.consumers.langfuse_tracing import LangfuseTracer, run_trace_id
from agentstream.consumers.registry import RuntimeRegistry
from agentstream.consumers.tracing import tracer_for, tracer_name, use_tracer
from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, SubmitRequest
from agentstream.core.tracing import NoopTracer
from tests.consumers import agents
from tests.consumers.helpers import burst, running_worker, wait_terminal
from tests.consumers.test_tracing import CALLER_SPAN_ID, TRACE_ID, TRACEPARENT, Traced

langfuse = pytest.importorskip("langfuse")

Exported = Callable[[], list[ReadableSpan]]
TYPE, LEVEL, STATUS = (
    "langfuse.observation.type",
    "langfuse.observation.level",
    "langfuse.observation.status_message",
)
INPUT, OUTPUT = "langfuse.observation.input", "langfuse.observation.output"


def start_tracer(capture_content: bool) -> tuple[Any, Exported]:
    exporter = InMemorySpanExporter()
    client = langfuse.Langfuse(
        public_key=f"pk-lf-{uuid.uuid4().hex}",  # the SDK keeps one pipeline per key: ours alone
        secret_key="sk-lf-test",
        host="http://127.0.0.1:9",  # never contacted: spans go to the exporter
        span_exporter=exporter,
        tracer_provider=TracerProvider(),
    )
    tracer = LangfuseTracer(client, capture_content=capture_content)
    use_tracer(tracer)

    def exported() -> list[ReadableSpan]:
        tracer.flush()
        return list(exporter.get_finished_spans())

    return client, exported


@pytest.fixture
def exported() -> Iterator[Exported]:
    client, spans = start_tracer(capture_content=False)
    yield spans
    use_tracer(NoopTracer())
    client.shutdown()


@pytest.fixture
def exported_with_content() -> Iterator[Exported]:
    client, spans = start_tracer(capture_content=True)
    yield spans
    use_tracer(NoopTracer())
    client.shutdown()


def registry() -> RuntimeRegistry:
    found = RuntimeRegistry()
    for runtime in (Traced(), agents.Permanent(), agents.RetryLater(), agents.Sleeper()):
        found.register(runtime)
    return found


def attempts_of(spans: list[ReadableSpan], run_id: str) -> list[ReadableSpan]:
    found = [
        s
        for s in spans
        if s.attributes and s.attributes.get(TYPE) == "agent" and _meta(s, "run_id") == run_id
    ]
    return sorted(found, key=lambda s: int(_meta(s, "attempt")))


def _meta(span: ReadableSpan, key: str) -> Any:
    raw = (span.attributes or {}).get(f"langfuse.observation.metadata.agentstream.{key}")
    return json.loads(str(raw)) if raw is not None else None


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def trace_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


async def test_an_attempt_is_an_agent_observation_in_the_callers_trace_with_generations_and_tools(
    wstore: EventStore, exported: Exported
) -> None:
    run_id = (
        await wstore.submit(SubmitRequest("traced", "user:1", metadata={"traceparent": TRACEPARENT}))
    ).run_id
    await burst(wstore, registry=registry())

    spans = exported()
    [attempt] = attempts_of(spans, run_id)
    assert trace_of(attempt) == TRACE_ID and attempt.parent is not None
    assert format(attempt.parent.span_id, "016x") == CALLER_SPAN_ID
    assert attempt.attributes is not None and LEVEL not in attempt.attributes  # DEFAULT: it succeeded
    assert _meta(attempt, "outcome") == "succeeded" and _meta(attempt, "agent_key") == "traced"

    below = children(spans, attempt)
    generations = [s for s in below if s.attributes and s.attributes[TYPE] == "generation"]
    tools = [s for s in below if s.attributes and s.attributes[TYPE] == "tool"]
    assert len(generations) == 2 and [t.name for t in tools] == ["tool add"]
    for generation in generations:
        attrs = generation.attributes or {}
        assert attrs["langfuse.observation.model.name"]
        usage = json.loads(str(attrs["langfuse.observation.usage_details"]))
        assert (
            usage["input"] > 0 and usage["output"] > 0 and usage["total"] == usage["input"] + usage["output"]
        )
    # no bodies unless TRACE_CONTENT: no input or output on any observation
    assert not [s.name for s in spans if INPUT in (s.attributes or {}) or OUTPUT in (s.attributes or {})]


async def test_failed_timed_out_and_retried_attempts_are_errors_with_the_reason_one_trace_per_run(
    wstore: EventStore, exported: Exported
) -> None:
    failed = (await wstore.submit(SubmitRequest("permanent", "user:1"))).run_id
    slow = (
        await wstore.submit(SubmitRequest("sleeper", "user:1", params={"sleep_s": 30}, timeout_s=0.2))
    ).run_id
    retried = (await wstore.submit(SubmitRequest("retry-later", "user:1", params={"delay_s": 0}))).run_id
    await burst(wstore, registry=registry())

    spans = exported()
    [fail] = attempts_of(spans, failed)
    assert fail.attributes is not None and fail.attributes[LEVEL] == "ERROR"
    assert "failed" in str(fail.attributes[STATUS]) and "the prompt is invalid" in str(
        fail.attributes[STATUS]
    )
    [timeout] = attempts_of(spans, slow)
    assert timeout.attributes is not None and timeout.attributes[LEVEL] == "ERROR"
    assert str(timeout.attributes[STATUS]).startswith("timed_out: the run did not finish within 0.2s")
    first, second = attempts_of(spans, retried)
    assert first.attributes is not None and first.attributes[LEVEL] == "ERROR"
    assert str(first.attributes[STATUS]).startswith("retrying: ")
    assert second.attributes is not None and LEVEL not in second.attributes
    # no traceparent: every attempt of a run lands in the run's own trace, whichever worker ran it
    assert trace_of(first) == trace_of(second) == run_trace_id(retried) != trace_of(fail)


async def test_a_cancelled_attempt_is_a_warning_not_an_error(wstore: EventStore, exported: Exported) -> None:
    run_id = (await wstore.submit(SubmitRequest("sleeper", "user:1", params={"sleep_s": 30}))).run_id
    async with running_worker(wstore, registry=registry()):
        await asyncio.wait_for(agents.started(run_id).wait(), 10)
        await wstore.cancel(run_id, reason="the user closed the tab")
        await wait_terminal(wstore, run_id)

    [attempt] = attempts_of(exported(), run_id)
    assert attempt.attributes is not None and attempt.attributes[LEVEL] == "WARNING"
    assert str(attempt.attributes[STATUS]).startswith("cancelled: ")


async def test_with_trace_content_generations_and_tools_carry_their_input_and_output(
    wstore: EventStore, exported_with_content: Exported
) -> None:
    run_id = (await wstore.submit(SubmitRequest("traced", "user:1"))).run_id
    await burst(wstore, registry=registry())

    spans = exported_with_content()
    [attempt] = attempts_of(spans, run_id)
    assert json.loads(str((attempt.attributes or {})[OUTPUT])) == {"sum": 3}
    below = children(spans, attempt)
    [tool] = [s for s in below if s.name == "tool add"]
    assert json.loads(str((tool.attributes or {})[INPUT])) == {"a": 1, "b": 2}
    assert json.loads(str((tool.attributes or {})[OUTPUT])) == 3
    generations = [s for s in below if (s.attributes or {}).get(TYPE) == "generation"]
    inputs = [json.loads(str((g.attributes or {})[INPUT])) for g in generations]
    assert sorted(m[0]["content"] for m in inputs) == ["again", "hi"]
    assert all(json.loads(str((g.attributes or {})[OUTPUT]))["role"] == "assistant" for g in generations)


def test_langfuse_is_selected_by_tracer_or_the_seeds_langfuse_enabled_and_needs_its_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert tracer_name(Settings(TRACER="langfuse")) == "langfuse"
    assert tracer_name(Settings(LANGFUSE_ENABLED=True)) == "langfuse"
    assert tracer_name(Settings(LANGFUSE_ENABLED=True, TRACER="otel")) == "otel"
    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("LANGFUSE_SECRET_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="needs LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY"):
        tracer_for("langfuse", Settings())
    with pytest.raises(ConfigurationError, match="TRACER must be one of noop, otel, langfuse"):
        Settings(TRACER="zipkin")


def test_a_langfuse_sdk_older_than_v3_is_refused_at_start_not_on_every_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class LangfuseV2:  # the v2 client: trace() / generation(), no start_observation
        def __init__(self, **options: object) -> None:
            pass

        def trace(self, **fields: object) -> None:
            raise AssertionError("never called")

    old = type(langfuse)("langfuse")
    old.Langfuse = LangfuseV2  # type: ignore[attr-defined]
    old.__version__ = "2.60.3"  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "langfuse", old)
    settings = Settings(TRACER="langfuse", LANGFUSE_PUBLIC_KEY="pk-lf-1", LANGFUSE_SECRET_KEY="sk-lf-1")
    with pytest.raises(
        ConfigurationError, match=r"Langfuse SDK 3\.4 or later.*2\.60\.3.*agentstream\[langfuse\]"
    ):
        tracer_for("langfuse", settings)

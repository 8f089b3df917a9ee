"""A tracer that raises — when a span is asked for, on its entry, in any of its methods, on its
exit, in ``flush`` — never fails, re-runs or dead-letters a run: the attempt, its LLM stream and
its tool calls go on untraced, the agent's own exceptions and cancels pass through the spans
unchanged, and the failure is logged once per kind, not once per run."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from agentstream.consumers import AgentRuntime, RunContext, RunResult, RuntimeRegistry
from agentstream.consumers.llm import FakeReply, FakeToolCall, get_llm_client
from agentstream.consumers.llm.traced import TracedLLMClient
from agentstream.consumers.tools import ToolRegistry, run_tool_loop
from agentstream.consumers.tracing import current_tracer, use_tracer
from agentstream.core.settings import Settings
from agentstream.core.state import RunStatus
from agentstream.core.store import EventStore, SubmitRequest
from agentstream.core.tracing import AttributeValue, NoopTracer, Span, SpanKind
from tests.consumers import agents
from tests.consumers.helpers import burst, running_worker, wait_terminal

# where the tracer raises: record_error is called on a failed tool (and attempt), record_warning
# only on an attempt that ends short of success without a fault (a cancel)
IN_EVERY_RUN = ("span", "enter", "set_attribute", "record_error", "record_content", "exit")
IN_A_CANCEL = ("span", "enter", "set_attribute", "record_warning", "record_content", "exit")
FAULTS = (*IN_EVERY_RUN, "record_warning")


class TracerDown(RuntimeError):
    """What the tracer (or its exporter) raises."""


class FaultySpan:
    def __init__(self, tracer: FaultyTracer) -> None:
        self.tracer = tracer

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.tracer.hit("set_attribute")

    def record_error(self, message: str) -> None:
        self.tracer.hit("record_error")

    def record_warning(self, message: str) -> None:
        self.tracer.hit("record_warning")

    def record_content(self, *, input: Any = None, output: Any = None) -> None:
        self.tracer.hit("record_content")


class FaultyTracer:
    """Raises ``TracerDown`` each time it reaches ``fault``, and counts those times; keeps what
    passed through its spans (as the adapters record an exception on the span)."""

    capture_content = True

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.hits = 0
        self.passed: list[BaseException] = []

    def hit(self, place: str) -> None:
        if place == self.fault:
            self.hits += 1
            raise TracerDown(f"the exporter is down ({place})")

    def span(
        self,
        name: str,
        *,
        kind: SpanKind = "internal",
        traceparent: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> contextlib.AbstractContextManager[Span]:
        self.hit("span")
        return self._span()

    @contextlib.contextmanager
    def _span(self) -> Iterator[Span]:
        self.hit("enter")
        try:
            yield FaultySpan(self)
        except BaseException as exc:
            self.passed.append(exc)
            raise
        finally:
            self.hit("exit")

    def flush(self) -> None:
        self.hit("flush")


class SwallowingTracer(FaultyTracer):
    """A tracer whose spans (wrongly) swallow what passes through them."""

    @contextlib.contextmanager
    def _span(self) -> Iterator[Span]:
        with contextlib.suppress(BaseException):
            yield FaultySpan(self)


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def broken() -> int:
    """A tool that fails."""
    raise LookupError("the tool's own failure")


class Tooling(AgentRuntime):
    """Streams a model turn that calls two tools (one fails), then the model's answer."""

    key = "tooling"

    async def run(self, ctx: RunContext) -> RunResult:
        calls = (FakeToolCall("add", {"a": 1, "b": 2}), FakeToolCall("broken"))
        llm = get_llm_client("fake", settings=Settings(), script=[FakeReply("adding", calls)])
        done = await run_tool_loop(ctx, llm, [add, broken], [{"role": "user", "content": "add"}])
        return RunResult(
            final_output={"answer": done.content, "tools": [m["content"] for m in done.messages[2:4]]}
        )


def registry() -> RuntimeRegistry:
    found = agents.registry()
    found.register(Tooling())
    return found


@pytest.fixture
def worker_settings(worker_settings: Settings) -> Settings:
    return dataclasses.replace(worker_settings, RETRY_BACKOFF_BASE=0.05)  # a retry in 50 ms


@pytest.fixture
def faulty(request: pytest.FixtureRequest) -> Iterator[FaultyTracer]:
    tracer = FaultyTracer(request.param)
    use_tracer(tracer)
    yield tracer
    use_tracer(NoopTracer())


def tracer_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "agentstream.tracing" and r.levelno == logging.WARNING]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def submit(store: EventStore, agent_key: str, **kw: Any) -> str:
    return (await store.submit(SubmitRequest(agent_key, "user:1", **kw))).run_id


@pytest.mark.parametrize("faulty", IN_EVERY_RUN, indirect=True)
async def test_runs_succeed_on_their_first_attempt_whatever_part_of_the_tracer_fails(
    wstore: EventStore, faulty: FaultyTracer, caplog: pytest.LogCaptureFixture
) -> None:
    run_ids = [await submit(wstore, "tooling") for _ in range(3)]
    with caplog.at_level(logging.WARNING):
        await burst(wstore, registry=registry())
    assert not errors(caplog)  # no job task crashed
    for run_id in run_ids:
        state = await wstore.run_state(run_id)
        assert state is not None
        assert (state.status, state.attempt) == (RunStatus.SUCCEEDED, 1), state
        output = (await wstore.read_run(run_id))[-1].payload["output"]
        assert output["answer"].startswith("The tool returned")
        failure = '{"error": "LookupError: the tool\'s own failure"}'  # the tool's, not the tracer's
        assert output["tools"] == ["3", failure]
    assert faulty.hits >= 3  # the tracer did fail, in every run
    if faulty.fault not in ("span", "enter"):  # the span was open: the tool's exception went through it
        assert sum(isinstance(e, LookupError) for e in faulty.passed) == 3
    [warning] = tracer_warnings(caplog)  # once, not once per run or per span
    what = {"span": "opening a span", "enter": "opening a span", "exit": "closing a span"}.get(faulty.fault)
    assert (what or faulty.fault) in warning.getMessage() and "untraced" in warning.getMessage()


@pytest.mark.parametrize("faulty", IN_EVERY_RUN, indirect=True)
async def test_an_agents_exception_still_retries_or_fails_its_run_under_a_failing_tracer(
    wstore: EventStore, faulty: FaultyTracer, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = await submit(wstore, "flaky", params={"succeed_on": 2})
    permanent = await submit(wstore, "permanent")
    with caplog.at_level(logging.WARNING):
        await burst(wstore, registry=registry())
    assert not errors(caplog)  # no job task crashed
    retried, failed = await wstore.run_state(flaky), await wstore.run_state(permanent)
    assert retried is not None and (retried.status, retried.attempt) == (RunStatus.SUCCEEDED, 2)
    assert failed is not None and (failed.status, failed.attempt) == (RunStatus.FAILED, 1)
    assert "the prompt is invalid" in str((await wstore.read_run(permanent))[-1].payload["error"])
    assert faulty.hits >= 2  # in each run


@pytest.mark.parametrize("faulty", IN_A_CANCEL, indirect=True)
async def test_a_cancelled_run_is_cancelled_once_under_a_failing_tracer(
    wstore: EventStore, faulty: FaultyTracer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        async with running_worker(wstore, registry=registry()):
            run_id = await submit(wstore, "sleeper", params={"sleep_s": 60})
            await asyncio.wait_for(agents.started(run_id).wait(), 10)
            await wstore.cancel(run_id, reason="user pressed stop")
            state = await wait_terminal(wstore, run_id)
    assert not errors(caplog)  # no job task crashed
    assert (state.status, state.attempt) == (RunStatus.CANCELLED, 1)
    assert faulty.hits >= 1


@pytest.mark.parametrize("faulty", IN_EVERY_RUN, indirect=True)
async def test_an_llm_stream_and_a_tool_call_work_under_a_failing_tracer(faulty: FaultyTracer) -> None:
    llm = get_llm_client("fake", settings=Settings())
    assert isinstance(llm, TracedLLMClient)
    chunks = [c async for c in llm.stream([{"role": "user", "content": "hi there"}])]
    assert "".join(c.delta for c in chunks) == "You said: hi there"
    assert (await llm.generate([{"role": "user", "content": "again"}])).content == "You said: again"
    tools = ToolRegistry([add, broken])
    assert await tools.execute("add", {"a": 1, "b": 2}) == 3
    with pytest.raises(LookupError, match="the tool's own failure"):
        await tools.execute("broken")
    assert faulty.hits >= 1


def raise_in_a_span(exc: BaseException) -> None:
    with current_tracer().span("a span") as span:
        span.set_attribute("k", 1)
        span.record_error("why")
        span.record_warning("why")
        span.record_content(input="in", output="out")
        raise exc


@pytest.mark.parametrize("faulty", FAULTS, indirect=True)
@pytest.mark.parametrize("exc", [LookupError("the agent's"), asyncio.CancelledError(), GeneratorExit()])
def test_what_passes_through_a_failing_tracers_span_comes_out_unchanged(
    faulty: FaultyTracer, exc: BaseException
) -> None:
    with pytest.raises(type(exc)) as raised:
        raise_in_a_span(exc)
    assert raised.value is exc
    if faulty.fault not in ("span", "enter"):
        assert faulty.passed == [exc]  # the tracer saw it, as an adapter records it


def test_what_passes_through_a_span_that_swallows_it_comes_out_all_the_same() -> None:
    use_tracer(SwallowingTracer("none"))
    try:
        error = LookupError("the agent's")
        with pytest.raises(LookupError) as raised, current_tracer().span("a span"):
            raise error
        assert raised.value is error
    finally:
        use_tracer(NoopTracer())


def test_a_failing_flush_is_logged_once_and_raises_nothing(caplog: pytest.LogCaptureFixture) -> None:
    use_tracer(FaultyTracer("flush"))
    try:
        with caplog.at_level(logging.WARNING):
            current_tracer().flush()
            current_tracer().flush()
    finally:
        use_tracer(NoopTracer())
    [warning] = tracer_warnings(caplog)
    assert "flush" in warning.getMessage()


def test_the_tracer_keeps_its_capture_content_and_the_noop_tracer_its_fast_path() -> None:
    use_tracer(FaultyTracer("none"))
    try:
        assert current_tracer().capture_content is True
    finally:
        noop = NoopTracer()
        use_tracer(noop)
    assert current_tracer() is noop  # execution.py skips the span when type(tracer) is NoopTracer

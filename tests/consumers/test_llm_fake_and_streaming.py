"""The ``fake`` provider, provider selection from settings, and the run streaming helper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

import pytest

from agentstream.consumers.errors import PermanentFailure, Retry
from agentstream.consumers.llm import (
    FakeLLMClient,
    FakeReply,
    FakeToolCall,
    LLMChunk,
    LLMClient,
    Usage,
    configure,
    get_llm_client,
    register_provider,
    stream_completion,
)
from agentstream.consumers.llm.config import PROVIDERS
from agentstream.consumers.llm.streaming import CallDeadline
from agentstream.consumers.llm.types import LLMResponse
from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings
from tests.consumers.llm_fakes import RecordingContext


@pytest.fixture(autouse=True)
def unconfigured() -> Iterator[None]:
    configure(None)
    yield
    configure(None)


async def test_the_fake_streams_its_script_word_by_word_with_deterministic_usage() -> None:
    llm = FakeLLMClient(["Hello there, world."])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    chunks = [c async for c in llm.stream(messages)]
    assert [c.delta for c in chunks if c.delta] == ["Hello", " there,", " world."]
    assert chunks[-1] == LLMChunk(finish_reason="stop", usage=Usage(4, 3, 7))
    assert isinstance(llm, LLMClient)


async def test_the_fake_scripts_tool_calls_and_errors_then_falls_back_to_echo() -> None:
    llm = FakeLLMClient(
        [FakeReply(tool_calls=(FakeToolCall("clock", {"timezone": "UTC"}),)), PermanentFailure("scripted")]
    )
    first = await llm.generate([{"role": "user", "content": "time?"}])
    assert first.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in first.tool_calls] == [
        ("call_1", "clock", '{"timezone": "UTC"}')
    ]
    assert first.message["content"] is None
    with pytest.raises(PermanentFailure):
        await llm.generate([{"role": "user", "content": "again"}])
    echoed = await llm.generate([{"role": "user", "content": "ping"}])
    assert echoed.content == "You said: ping"
    tool_turn = await llm.generate([{"role": "tool", "tool_call_id": "x", "content": "12:00"}])
    assert tool_turn.content == "The tool returned: 12:00"


async def test_the_fake_per_token_delay_paces_the_stream() -> None:
    llm = FakeLLMClient(["a b c d e"], token_delay_s=0.02)
    started = time.monotonic()
    await llm.generate([{"role": "user", "content": "x"}])
    assert time.monotonic() - started >= 0.09


def test_get_llm_client_honours_model_provider_and_default_model() -> None:
    llm = get_llm_client(settings=Settings(MODEL_PROVIDER="fake", DEFAULT_MODEL="tiny"))
    assert isinstance(llm, FakeLLMClient)
    assert llm.default_model == "tiny"
    assert get_llm_client("fake", "other", settings=Settings()).default_model == "other"


def test_configure_sets_the_process_wide_settings_read_by_default() -> None:
    configure(Settings(MODEL_PROVIDER="fake", DEFAULT_MODEL="configured"))
    llm = get_llm_client(token_delay_s=0.5)
    assert isinstance(llm, FakeLLMClient)
    assert (llm.default_model, llm.token_delay_s) == ("configured", 0.5)


def test_an_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="use one of anthropic, fake, litellm, openai"):
        get_llm_client("gemini", settings=Settings())


def test_a_registered_provider_is_used() -> None:
    def factory(settings: Settings, model: str, **options: Any) -> LLMClient:
        return FakeLLMClient(model=f"custom:{model}")

    register_provider("custom", factory)
    try:
        assert get_llm_client("custom", "m", settings=Settings()).default_model == "custom:m"
    finally:
        PROVIDERS.pop("custom")


async def test_stream_completion_emits_deltas_then_one_message_and_records_usage() -> None:
    ctx = RecordingContext([{"role": "user", "content": "one two"}])
    response = await stream_completion(ctx, FakeLLMClient(["Three four five"]), ctx.input_messages)
    assert ctx.types() == ["assistant.delta"] * 3 + ["assistant.message"]
    assert [p["delta"] for p in ctx.of("assistant.delta")] == ["Three", " four", " five"]
    assert ctx.of("assistant.message") == [{"role": "assistant", "content": "Three four five"}]
    assert ctx.usage == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert response.content == "Three four five"


async def test_usage_of_several_completions_adds_up_on_the_run() -> None:
    ctx = RecordingContext()
    llm = FakeLLMClient(["a b", "c"])
    await stream_completion(ctx, llm, [{"role": "user", "content": "x"}])
    await stream_completion(ctx, llm, [{"role": "user", "content": "y"}], emit_message=False)
    assert ctx.usage == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert len(ctx.of("assistant.message")) == 1


class ClosingProbe:
    """An LLM whose stream records whether it was closed (the HTTP-close stand-in)."""

    provider = "probe"
    default_model = "probe"

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.flowing = asyncio.Event()

    async def generate(
        self, messages: Sequence[Mapping[str, Any]], *, model: str | None = None, tools: Any = None, **kw: Any
    ) -> LLMResponse:
        raise NotImplementedError

    async def stream(
        self, messages: Sequence[Mapping[str, Any]], *, model: str | None = None, tools: Any = None, **kw: Any
    ) -> AsyncGenerator[LLMChunk, None]:
        try:
            while True:
                self.flowing.set()
                yield LLMChunk(delta="x")
        finally:
            self.closed.set()


class BlockingEmits(RecordingContext):
    """emit() parks on its 10th delta: the cancellation lands outside the provider's stream."""

    def __init__(self) -> None:
        super().__init__()
        self.parked = asyncio.Event()

    async def emit(self, event_type: str, payload: Mapping[str, Any], *, visibility: Any = None) -> None:
        await super().emit(event_type, payload)
        if len(self.events) == 10:
            self.parked.set()
            await asyncio.Event().wait()


async def test_cancelling_while_emitting_still_closes_the_provider_stream() -> None:
    probe = ClosingProbe()
    ctx = BlockingEmits()
    task = asyncio.create_task(stream_completion(ctx, probe, ctx.input_messages))
    await asyncio.wait_for(ctx.parked.wait(), 5)
    assert not probe.closed.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert probe.closed.is_set()


class Provider:
    """A provider stream: ``tokens`` at once, then a wait on ``release`` (a provider gone quiet)."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()
        self.cancelled = False

    async def stream(self) -> AsyncGenerator[str, None]:
        for n in range(self.tokens):
            yield f"t{n}"
        self.waiting.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        yield "late"


async def test_the_deadline_cancels_a_provider_wait_that_outlasts_it_and_asks_for_a_retry() -> None:
    provider = Provider(tokens=2)
    deadline = CallDeadline("probe", 0.05)
    seen: list[str] = []
    with pytest.raises(Retry, match=r"probe call did not finish within 0\.05 s.*raise STEP_TIMEOUT_SECONDS"):
        await _drain(deadline, provider.stream(), seen)
    assert seen == ["t0", "t1"]
    assert provider.cancelled


async def test_time_the_caller_spends_between_chunks_counts_but_is_never_interrupted() -> None:
    provider = Provider(tokens=3)
    deadline = CallDeadline("probe", 0.05)
    handled: list[str] = []

    async def slow_handler(item: str) -> None:  # the caller's own work, e.g. ctx.emit
        await asyncio.sleep(0.1)
        handled.append(item)

    with pytest.raises(Retry):
        await _drain(deadline, provider.stream(), [], on_item=slow_handler)
    assert handled == ["t0"]  # finished, not cancelled; the next pull raised
    assert not provider.waiting.is_set()


async def test_a_provider_s_own_timeout_error_passes_through_and_no_deadline_bounds_nothing() -> None:
    async def own_timeout() -> None:
        raise TimeoutError("the provider's")

    with pytest.raises(TimeoutError, match="the provider's"):
        await CallDeadline("probe", 10).bound(own_timeout())
    provider = Provider(tokens=1)
    unbounded = CallDeadline("probe", None)
    seen: list[str] = []
    task = asyncio.create_task(_drain(unbounded, provider.stream(), seen))
    await asyncio.wait_for(provider.waiting.wait(), 5)
    provider.release.set()
    await asyncio.wait_for(task, 5)
    assert seen == ["t0", "late"]


async def test_a_call_started_past_its_deadline_is_not_made_and_a_cancel_stays_a_cancel() -> None:
    ran = False

    async def call() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(Retry):
        await CallDeadline("probe", 0).bound(call())  # closed unawaited: no warning (warnings fail)
    assert not ran
    provider = Provider(tokens=0)
    task = asyncio.create_task(_drain(CallDeadline("probe", 10), provider.stream(), []))
    await asyncio.wait_for(provider.waiting.wait(), 5)
    task.cancel()  # the run's cancel, not the deadline: CancelledError, not Retry
    with pytest.raises(asyncio.CancelledError):
        await task


async def _drain(
    deadline: CallDeadline,
    stream: AsyncGenerator[str, None],
    into: list[str],
    on_item: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    try:
        async with aclosing(deadline.chunks(stream)) as items:
            async for item in items:
                into.append(item)
                if on_item is not None:
                    await on_item(item)
    finally:
        await stream.aclose()  # the caller closes the provider's stream (the HTTP response)

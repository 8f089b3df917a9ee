"""The real ``openai`` client against a local OpenAI-compatible server started by the test."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from agentstream.consumers.errors import PermanentFailure, Retry
from agentstream.consumers.llm import get_llm_client, stream_completion
from agentstream.consumers.llm.openai_client import ChunkAssembler, OpenAIClient
from agentstream.consumers.llm.types import LLMClient, ToolCall, Usage
from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings
from tests.consumers.fake_openai_server import GREETING, FakeOpenAIServer, Reply
from tests.consumers.llm_fakes import RecordingContext


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(server: FakeOpenAIServer) -> Settings:
    return Settings(MODEL_PROVIDER="openai", DEFAULT_MODEL="local-model", OPENAI_BASE_URL=server.base_url)


@pytest.fixture
async def llm(settings: Settings) -> OpenAIClient:
    client = get_llm_client(settings=settings)
    assert isinstance(client, OpenAIClient)
    return client


async def test_get_llm_client_honours_model_provider_base_url_and_default_model(
    llm: OpenAIClient, server: FakeOpenAIServer
) -> None:
    assert isinstance(llm, LLMClient)
    response = await llm.generate([{"role": "user", "content": "hi"}])
    assert response.content == GREETING
    assert server.requests[0].path == "/v1/chat/completions"
    assert server.requests[0].body["model"] == "local-model"
    assert response.usage == Usage(11, 5, 16)
    assert response.finish_reason == "stop"
    await llm.aclose()


async def test_streamed_completion_asks_for_usage_and_reports_it(
    llm: OpenAIClient, server: FakeOpenAIServer
) -> None:
    chunks = [chunk async for chunk in llm.stream([{"role": "user", "content": "hi"}], model="other-model")]
    assert "".join(c.delta for c in chunks) == GREETING
    assert server.requests[0].body["stream_options"] == {"include_usage": True}
    assert server.requests[0].body["model"] == "other-model"
    usages = [c.usage for c in chunks if c.usage is not None]
    assert usages == [Usage(11, 5, 16)]
    await llm.aclose()


async def test_streamed_tool_call_fragments_are_joined_into_whole_calls(
    llm: OpenAIClient, server: FakeOpenAIServer
) -> None:
    server.replies.append(Reply(tool_calls=(("add", {"a": 2, "b": 40}), ("clock", {"timezone": "UTC"}))))
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    chunks = [c async for c in llm.stream([{"role": "user", "content": "2+40?"}], tools=tools)]
    calls = [call for c in chunks for call in c.tool_calls]
    assert calls == [
        ToolCall("call_0", "add", json.dumps({"a": 2, "b": 40})),
        ToolCall("call_1", "clock", json.dumps({"timezone": "UTC"})),
    ]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    assert server.requests[0].body["tools"] == tools
    await llm.aclose()


async def test_generate_maps_tool_calls_into_the_assistant_message(
    llm: OpenAIClient, server: FakeOpenAIServer
) -> None:
    server.replies.append(Reply(tool_calls=(("add", {"a": 1, "b": 2}),)))
    response = await llm.generate([{"role": "user", "content": "1+2?"}])
    assert response.tool_calls == (ToolCall("call_0", "add", '{"a": 1, "b": 2}'),)
    assert response.message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
        ],
    }
    await llm.aclose()


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_429_is_retriable_after_the_retry_after_delay_and_the_sdk_does_not_retry(
    llm: OpenAIClient, server: FakeOpenAIServer, streamed: bool
) -> None:
    with pytest.raises(Retry) as caught:
        await _ask(llm, "rate-limited", streamed=streamed)
    assert caught.value.delay_s == 7.0
    assert "HTTP 429" in str(caught.value)
    assert len(server.requests) == 1  # max_retries=0: our runtime retries, not the SDK
    await llm.aclose()


async def test_a_400_is_a_permanent_failure_not_retried(llm: OpenAIClient, server: FakeOpenAIServer) -> None:
    with pytest.raises(PermanentFailure) as caught:
        await llm.generate([{"role": "user", "content": "hi"}], model="bad-request")
    assert "HTTP 400" in str(caught.value)
    assert "unknown role" in str(caught.value)
    assert len(server.requests) == 1
    await llm.aclose()


async def test_a_500_is_retriable_with_the_runtime_backoff(
    llm: OpenAIClient, server: FakeOpenAIServer
) -> None:
    with pytest.raises(Retry) as caught:
        await llm.generate([{"role": "user", "content": "hi"}], model="server-error")
    assert caught.value.delay_s is None
    await llm.aclose()


async def test_a_refused_connection_is_retriable() -> None:
    settings = Settings(OPENAI_BASE_URL="http://127.0.0.1:9/v1", STEP_TIMEOUT_SECONDS=5)
    llm = get_llm_client("openai", settings=settings)
    with pytest.raises(Retry, match="no response"):
        await llm.generate([{"role": "user", "content": "hi"}])
    await llm.aclose()


def test_the_openai_provider_without_a_key_or_base_url_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        get_llm_client("openai", settings=Settings())


async def test_cancelling_a_run_mid_stream_closes_the_http_stream_within_100_ms(
    llm: OpenAIClient, server: FakeOpenAIServer
) -> None:
    ctx = RecordingContext()
    task = asyncio.create_task(stream_completion(ctx, llm, ctx.input_messages, model="endless"))
    deadline = time.monotonic() + 10
    while len(ctx.of("assistant.delta")) < 5:  # the stream is flowing
        assert time.monotonic() < deadline, "no tokens arrived from the local server"
        await asyncio.sleep(0.005)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(server.disconnected.wait, 5), "the server never saw the client go away"
    elapsed_ms = (server.disconnected_at[0] - cancelled_at) * 1000
    assert elapsed_ms < 100, f"disconnect seen {elapsed_ms:.1f} ms after the cancel"
    assert ctx.of("assistant.message") == []  # a cut-short stream is not a message
    await llm.aclose()


async def _ask(llm: OpenAIClient, model: str, *, streamed: bool) -> None:
    if streamed:
        async for _ in llm.stream([{"role": "user", "content": "hi"}], model=model):
            pass
    else:
        await llm.generate([{"role": "user", "content": "hi"}], model=model)


async def test_parallel_tool_calls_all_at_index_0_with_their_own_ids_stay_separate_calls(
    llm: OpenAIClient, server: FakeOpenAIServer
) -> None:
    server.replies.append(
        Reply(tool_calls=(("get_weather", {"city": "London"}), ("get_time", {"tz": "UTC"})))
    )
    chunks = [c async for c in llm.stream([{"role": "user", "content": "hi"}], model="same-index-tools")]
    assert [call for c in chunks for call in c.tool_calls] == [
        ToolCall("call_0", "get_weather", json.dumps({"city": "London"})),
        ToolCall("call_1", "get_time", json.dumps({"tz": "UTC"})),
    ]
    await llm.aclose()


def test_tool_call_fragments_without_an_index_start_a_call_per_id_and_join_the_rest() -> None:
    assembler = ChunkAssembler()

    def fragments(*calls: dict[str, object], finish: str | None = None) -> dict[str, object]:
        delta = {"tool_calls": list(calls)} if calls else {}
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = assembler.feed(fragments({"id": "c1", "function": {"name": "get_weather", "arguments": '{"city"'}}))
    out += assembler.feed(fragments({"function": {"arguments": ': "London"}'}}))  # continues c1
    out += assembler.feed(fragments({"id": "c1", "function": {"arguments": ""}}))  # its id again: still c1
    out += assembler.feed(fragments({"id": "c2", "function": {"name": "get_time", "arguments": "{}"}}))
    out += assembler.feed(fragments(finish="tool_calls"))
    assert [call for c in out for call in c.tool_calls] == [
        ToolCall("c1", "get_weather", '{"city": "London"}'),
        ToolCall("c2", "get_time", "{}"),
    ]


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_exhausted_quota_429_is_permanent_and_says_to_check_billing(
    llm: OpenAIClient, server: FakeOpenAIServer, streamed: bool
) -> None:
    with pytest.raises(PermanentFailure) as caught:
        await _ask(llm, "quota-exhausted", streamed=streamed)
    assert "HTTP 429" in str(caught.value)
    assert "billing" in str(caught.value) and "spend limit" in str(caught.value)
    assert len(server.requests) == 1
    await llm.aclose()


async def test_openai_base_url_and_no_key_in_the_environment_is_enough_as_for_the_sdk(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    llm = get_llm_client("openai", "env-model", settings=Settings())
    response = await llm.generate([{"role": "user", "content": "hi"}])
    assert response.content == GREETING
    assert server.requests[0].body["model"] == "env-model"
    await llm.aclose()


@pytest.mark.parametrize("streamed", [True, False])
async def test_step_timeout_bounds_the_whole_call_of_a_stream_that_never_stops_and_closes_it(
    server: FakeOpenAIServer, streamed: bool
) -> None:
    settings = Settings(OPENAI_BASE_URL=server.base_url, STEP_TIMEOUT_SECONDS=0.3)
    llm = get_llm_client("openai", settings=settings)
    started = time.monotonic()
    with pytest.raises(Retry) as caught:  # tokens every 5 ms: no single read ever times out
        await _ask(llm, "endless", streamed=streamed)
    raised_at = time.monotonic()
    assert 0.25 <= raised_at - started < 5
    assert "within 0.3 s" in str(caught.value)
    assert "raise STEP_TIMEOUT_SECONDS" in str(caught.value)
    assert await asyncio.to_thread(server.disconnected.wait, 5), "the HTTP stream was left open"
    assert server.disconnected_at[0] - raised_at < 0.2
    await llm.aclose()

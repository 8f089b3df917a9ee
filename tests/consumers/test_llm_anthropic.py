"""Anthropic mapping (pure, both ways) and the real SDK against the local server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from agentstream.consumers.errors import PermanentFailure, Retry
from agentstream.consumers.llm import get_llm_client
from agentstream.consumers.llm.anthropic_format import (
    StreamAssembler,
    from_anthropic,
    response_from_anthropic,
    to_anthropic,
    tools_to_anthropic,
)
from agentstream.consumers.llm.types import LLMChunk, ToolCall, Usage
from agentstream.core.settings import Settings
from tests.consumers.fake_openai_server import FakeOpenAIServer, Reply

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "system", "content": "Use tools."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "t1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "t2",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Rome"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "t2", "content": "rain", "is_error": True},
    {"role": "user", "content": "And tomorrow?"},
    {"role": "assistant", "content": "No idea."},
]


def test_openai_messages_map_to_anthropic_system_tool_use_and_merged_tool_results() -> None:
    system, messages = to_anthropic(CONVERSATION)
    assert system == "You are terse.\n\nUse tools."
    assert messages == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "t2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "rain", "is_error": True},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "No idea."}]},
    ]


def test_anthropic_messages_map_back_to_the_same_openai_messages() -> None:
    system, messages = to_anthropic(CONVERSATION)
    back = from_anthropic(system, messages)
    expected = [{"role": "system", "content": "You are terse.\n\nUse tools."}, *CONVERSATION[2:]]
    assert back == expected


def test_tools_and_responses_map_from_openai_and_from_anthropic() -> None:
    spec = {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
    }
    assert tools_to_anthropic([spec]) == [
        {"name": "f", "description": "d", "input_schema": {"type": "object"}}
    ]
    response = response_from_anthropic(
        {
            "model": "claude-x",
            "content": [
                {"type": "text", "text": "On it."},
                {"type": "tool_use", "id": "u1", "name": "f", "input": {"a": 1}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 4},
        },
        "fallback",
    )
    assert response.tool_calls == (ToolCall("u1", "f", '{"a": 1}'),)
    assert response.message["content"] == "On it."
    assert (response.finish_reason, response.usage, response.model) == (
        "tool_calls",
        Usage(10, 4, 14),
        "claude-x",
    )


def test_stream_events_assemble_text_deltas_and_whole_tool_calls() -> None:
    assembler = StreamAssembler()
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 9}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "u", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a"'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ": 2}"},
        },
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 6}},
        {"type": "message_stop"},
    ]
    chunks = [chunk for event in events for chunk in assembler.feed(event)]
    assert chunks == [
        LLMChunk(delta="Hi"),
        LLMChunk(tool_calls=(ToolCall("u", "f", '{"a": 2}'),)),
        LLMChunk(finish_reason="tool_calls", usage=Usage(9, 6, 15)),
    ]


# -- the real SDK ---------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    pytest.importorskip("anthropic")
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.root_url)  # read by the SDK itself
    return Settings(MODEL_PROVIDER="anthropic", DEFAULT_MODEL="claude-local", ANTHROPIC_API_KEY="test-key")


async def test_the_anthropic_sdk_streams_text_and_a_tool_call_through_our_mapping(
    server: FakeOpenAIServer, settings: Settings
) -> None:
    server.replies.append(Reply("Let me check.", (("weather", {"city": "Paris"}),)))
    llm = get_llm_client(settings=settings)
    chunks = [c async for c in llm.stream(CONVERSATION[:4] + CONVERSATION[4:6], tools=[_weather_spec()])]
    body = server.requests[0].body
    assert server.requests[0].path == "/v1/messages"
    assert body["system"] == "You are terse.\n\nUse tools."
    assert body["model"] == "claude-local"
    assert body["messages"][-1]["content"][0]["type"] == "tool_result"
    assert body["tools"][0]["input_schema"]["required"] == ["city"]
    assert "".join(c.delta for c in chunks) == "Let me check."
    assert [call for c in chunks for call in c.tool_calls] == [
        ToolCall("toolu_1", "weather", '{"city": "Paris"}')
    ]
    assert [c.usage for c in chunks if c.usage] == [Usage(13, 4, 17)]  # 3 words + 1 call
    await llm.aclose()


async def test_the_anthropic_sdk_generate_and_errors_map_to_the_runtime(
    server: FakeOpenAIServer, settings: Settings
) -> None:
    llm = get_llm_client(settings=settings)
    server.replies.append(Reply(tool_calls=(("weather", {"city": "Rome"}),)))
    response = await llm.generate([{"role": "user", "content": "Rome?"}], tools=[_weather_spec()])
    assert response.tool_calls == (ToolCall("toolu_0", "weather", json.dumps({"city": "Rome"})),)
    assert response.finish_reason == "tool_calls"
    with pytest.raises(Retry) as caught:
        await llm.generate([{"role": "user", "content": "hi"}], model="rate-limited")
    assert caught.value.delay_s == 7.0
    with pytest.raises(PermanentFailure):
        await llm.generate([{"role": "user", "content": "hi"}], model="bad-request")
    assert len(server.requests) == 3  # the SDK's own retries are off
    await llm.aclose()


def _weather_spec() -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather of a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }

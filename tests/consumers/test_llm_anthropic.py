"""Anthropic mapping (pure, both ways) and the real SDK against the local server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from agentstream.consumers.errors import PermanentFailure, Retry
from agentstream.consumers.llm import get_llm_client
from agentstream.consumers.llm.anthropic_client import AnthropicClient, request_args, sdk_options
from agentstream.consumers.llm.anthropic_format import (
    StreamAssembler,
    from_anthropic,
    options_to_anthropic,
    response_from_anthropic,
    to_anthropic,
    tools_to_anthropic,
)
from agentstream.consumers.llm.types import LLMChunk, ResponseAssembler, ToolCall, Usage
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


PNG_DATA_URL = "data:image/png;base64,iVBORw0KGgo="


def test_openai_image_parts_become_anthropic_image_blocks_from_data_and_http_urls() -> None:
    _, messages = to_anthropic(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what are these?"},
                    {"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ]
    )
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what are these?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png,iVBORw0KGgo=",  # not base64
        "data:;base64,iVBORw0KGgo=",  # no media type
        "data:text/plain;base64,aGk=",  # not an image
        "data:image/png;base64,",  # no data
        "ftp://example.com/cat.png",
        "",
    ],
)
def test_an_image_part_with_a_malformed_url_is_a_permanent_failure_naming_the_part(url: str) -> None:
    content = [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(PermanentFailure, match=r"message 1, content part 1 \(image_url\)"):
        to_anthropic([{"role": "system", "content": "s"}, {"role": "user", "content": content}])


def test_an_empty_assistant_completion_is_left_out_and_the_user_turns_around_it_merge() -> None:
    empty = ResponseAssembler("m")
    empty.add(LLMChunk(finish_reason="stop"))
    assert empty.response().message == {"role": "assistant", "content": ""}
    _, messages = to_anthropic(
        [
            {"role": "user", "content": "hi"},
            empty.response().message,
            {"role": "assistant", "content": "  \n"},
            {"role": "user", "content": "again"},
        ]
    )
    assert messages == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]}
    ]


def test_a_developer_message_joins_the_system_text_and_an_unknown_role_is_a_permanent_failure() -> None:
    system, messages = to_anthropic(
        [
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": "Be nice."},
            {"role": "user", "content": "hi"},
        ]
    )
    assert (system, messages) == ("Be terse.\n\nBe nice.", [{"role": "user", "content": "hi"}])
    with pytest.raises(PermanentFailure, match="message 1: role 'function'"):
        to_anthropic([{"role": "user", "content": "hi"}, {"role": "function", "content": "x"}])


@pytest.mark.parametrize(
    ("openai", "anthropic"),
    [
        ({"stop": ["END", "STOP"]}, {"stop_sequences": ["END", "STOP"]}),
        ({"stop": "END"}, {"stop_sequences": ["END"]}),
        ({"max_completion_tokens": 50}, {"max_tokens": 50}),
        ({"tool_choice": "required"}, {"tool_choice": {"type": "any"}}),
        ({"tool_choice": "auto"}, {"tool_choice": {"type": "auto"}}),
        ({"tool_choice": "none"}, {"tool_choice": {"type": "none"}}),
        (
            {"tool_choice": {"type": "function", "function": {"name": "weather"}}},
            {"tool_choice": {"type": "tool", "name": "weather"}},
        ),
        ({"tool_choice": {"type": "tool", "name": "f"}}, {"tool_choice": {"type": "tool", "name": "f"}}),
        (
            {"parallel_tool_calls": False},
            {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
        ),
        ({"user": "u-7", "n": 1}, {"metadata": {"user_id": "u-7"}}),
        ({"stop": None, "max_completion_tokens": None, "parallel_tool_calls": True}, {}),
    ],
)
def test_openai_call_options_map_to_anthropic_ones(openai: dict[str, Any], anthropic: dict[str, Any]) -> None:
    assert options_to_anthropic(openai, has_tools=True) == anthropic


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tool_choice": "sometimes"}, r"tool_choice='sometimes' has no Anthropic equivalent"),
        ({"tool_choice": {"type": "function"}}, r"tool_choice=.* has no Anthropic equivalent"),
        ({"max_tokens": 10, "max_completion_tokens": 20}, r"max_tokens= and max_completion_tokens="),
        ({"stop": ["A"], "stop_sequences": ["B"]}, r"stop= or stop_sequences="),
        ({"stop": 3}, r"stop=3: expected a string"),
        ({"logit_bias": {"1": 2}, "seed": 7}, r"logit_bias=, seed= not taken by this SDK"),
        ({"n": 2}, r"n= not taken"),
        ({"stream": True}, r"stream= is not an option"),
    ],
)
def test_call_options_with_no_anthropic_equivalent_are_permanent_failures(
    options: dict[str, Any], message: str
) -> None:
    anthropic = pytest.importorskip("anthropic")
    accepted = sdk_options(anthropic.AsyncAnthropic(api_key="x").messages.create)
    assert accepted is not None and "stop_sequences" in accepted and "stream" not in accepted
    with pytest.raises(PermanentFailure, match=message):
        request_args([{"role": "user", "content": "hi"}], "m", [_weather_spec()], options, accepted)


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


async def test_the_anthropic_sdk_sends_openai_options_and_images_in_anthropic_form(
    server: FakeOpenAIServer, settings: Settings
) -> None:
    llm = get_llm_client(settings=settings)
    messages = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG_DATA_URL}}]},
    ]
    await llm.generate(
        messages,
        tools=[_weather_spec()],
        stop=["END"],
        max_completion_tokens=50,
        tool_choice={"type": "function", "function": {"name": "weather"}},
    )
    body = server.requests[0].body
    assert body["system"] == "Be terse."
    assert (body["stop_sequences"], body["max_tokens"], body["tool_choice"]) == (
        ["END"],
        50,
        {"type": "tool", "name": "weather"},
    )
    assert "stop" not in body and "max_completion_tokens" not in body
    assert body["messages"][0]["content"][0]["source"]["media_type"] == "image/png"
    with pytest.raises(PermanentFailure, match="frequency_penalty="):
        await llm.generate([{"role": "user", "content": "hi"}], frequency_penalty=0.5)
    with pytest.raises(PermanentFailure, match="tool_choice="):
        [c async for c in llm.stream([{"role": "user", "content": "hi"}], tool_choice="sometimes")]
    assert len(server.requests) == 1  # a request that cannot be mapped is never sent
    await llm.aclose()


async def test_a_stream_that_keeps_sending_is_cut_at_step_timeout_seconds_with_a_retry(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.root_url)
    settings = Settings(
        MODEL_PROVIDER="anthropic", DEFAULT_MODEL="endless", ANTHROPIC_API_KEY="k", STEP_TIMEOUT_SECONDS=0.3
    )
    llm = get_llm_client(settings=settings)
    received: list[str] = []

    async def consume() -> None:
        async for chunk in llm.stream([{"role": "user", "content": "go"}]):
            received.append(chunk.delta)  # a token every 5 ms: the per-read timeout never fires

    with pytest.raises(Retry, match=r"anthropic call did not finish within 0.3 s"):
        await consume()
    assert len(received) > 5
    assert await asyncio.to_thread(server.disconnected.wait, 10)  # the HTTP stream was closed
    await llm.aclose()


async def test_a_generate_that_never_answers_is_cut_at_its_deadline_with_a_retry() -> None:
    async def hang(**_: Any) -> Any:
        await asyncio.Event().wait()

    client = SimpleNamespace(messages=SimpleNamespace(create=hang))
    llm = AnthropicClient(client, "claude-local", timeout_s=0.05)
    with pytest.raises(Retry, match=r"within 0.05 s"):
        await llm.generate([{"role": "user", "content": "hi"}])


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

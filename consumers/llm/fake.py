"""The ``fake`` provider: deterministic, scripted, streaming; no key, no network.

It is what the demo, the tests and the benchmarks run. Replies come from a ``script`` (consumed
in order: a ``FakeReply``, a plain string, or an exception to raise) and, when the script is
empty, from a ``responder(messages, tools) -> FakeReply`` (default: echo the last user message,
or report the last tool result). Text streams word by word, with an optional per-token delay;
usage counts words, so the figures are the same on every run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from agentstream.consumers.llm.types import (
    LLMChunk,
    LLMResponse,
    ResponseAssembler,
    ToolCall,
    ToolSpec,
    Usage,
)

_TOKEN = re.compile(r"\s*\S+")


@dataclass(frozen=True, slots=True)
class FakeToolCall:
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None  # default: call_<n>, numbered per client


@dataclass(frozen=True, slots=True)
class FakeReply:
    content: str = ""
    tool_calls: tuple[FakeToolCall, ...] = ()


ScriptItem = FakeReply | str | BaseException
Responder = Callable[[Sequence[Mapping[str, Any]], Sequence[ToolSpec]], FakeReply]


def tokens(text: str) -> list[str]:
    """Words with their leading whitespace: joining them gives the text back."""
    return _TOKEN.findall(text)


def count_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += len(tokens(content))
        for call in message.get("tool_calls") or ():
            total += 1 + len(tokens(str((call.get("function") or {}).get("arguments", ""))))
    return total


def echo_responder(messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec]) -> FakeReply:
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return FakeReply(f"The tool returned: {last.get('content', '')}")
    user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    text = user.get("content") if user else None
    return FakeReply(f"You said: {text}" if isinstance(text, str) and text else "Hello from the fake model.")


class FakeLLMClient:
    provider = "fake"

    def __init__(
        self,
        script: Iterable[ScriptItem] = (),
        *,
        responder: Responder = echo_responder,
        token_delay_s: float = 0.0,
        model: str = "fake",
    ) -> None:
        self.default_model = model
        self.token_delay_s = token_delay_s
        self.responder = responder
        self._script = list(script)
        self._call_ids = itertools.count(1)
        # What the model was asked, for assertions: (messages, tools, model) per call.
        self.requests: list[tuple[list[dict[str, Any]], list[dict[str, Any]], str]] = []

    def with_responder(self, responder: Responder) -> FakeLLMClient:
        return FakeLLMClient(
            self._script, responder=responder, token_delay_s=self.token_delay_s, model=self.default_model
        )

    async def aclose(self) -> None:
        return None

    def _next_reply(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec]) -> FakeReply:
        item: ScriptItem = self._script.pop(0) if self._script else self.responder(messages, tools)
        if isinstance(item, BaseException):
            raise item
        return FakeReply(item) if isinstance(item, str) else item

    async def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> LLMResponse:
        assembler = ResponseAssembler(model or self.default_model)
        async with aclosing(self.stream(messages, model=model, tools=tools, **kwargs)) as chunks:
            async for chunk in chunks:
                assembler.add(chunk)
        return assembler.response()

    async def stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[LLMChunk, None]:
        self.requests.append(
            ([dict(m) for m in messages], [dict(t) for t in tools or ()], model or self.default_model)
        )
        reply = self._next_reply(messages, tools or ())
        completion_tokens = 0
        for token in tokens(reply.content):
            if self.token_delay_s > 0:
                await asyncio.sleep(self.token_delay_s)  # simulated model latency, not synchronisation
            completion_tokens += 1
            yield LLMChunk(delta=token)
        calls = tuple(
            ToolCall(call.id or f"call_{next(self._call_ids)}", call.name, json.dumps(dict(call.arguments)))
            for call in reply.tool_calls
        )
        completion_tokens += sum(1 + len(tokens(call.arguments)) for call in calls)
        if calls:
            yield LLMChunk(tool_calls=calls)
        yield LLMChunk(
            finish_reason="tool_calls" if calls else "stop",
            usage=Usage.of(count_tokens(messages), completion_tokens),
        )

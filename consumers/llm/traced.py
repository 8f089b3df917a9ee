"""An ``LLMClient`` that wraps each call in a span of the process's tracer (model, provider, token
usage and status; the messages and the answer only when the tracer captures content, i.e.
``TRACE_CONTENT``) and, when the worker serves metrics, counts tokens by model.

``get_llm_client`` wraps only when one of them is on, so a default process pays nothing."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from agentstream.consumers.llm.types import LLMChunk, LLMClient, LLMResponse, ToolCall, ToolSpec, Usage
from agentstream.consumers.tracing import current_tracer
from agentstream.core.tracing import Span


class TokenMeter:
    """Tokens by (model, kind) used in this process; kind is ``input`` or ``output``."""

    def __init__(self) -> None:
        self.enabled = False
        self.tokens: dict[tuple[str, str], int] = {}

    def add(self, model: str, usage: Usage) -> None:
        for kind, amount in (("input", usage.prompt_tokens), ("output", usage.completion_tokens)):
            self.tokens[(model, kind)] = self.tokens.get((model, kind), 0) + amount


token_meter = TokenMeter()


class TracedLLMClient:
    def __init__(self, inner: LLMClient) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.default_model = inner.default_model

    def _attributes(self, model: str | None) -> dict[str, str | int | float | bool]:
        return {"gen_ai.system": self.provider, "gen_ai.request.model": model or self.default_model}

    async def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> LLMResponse:
        tracer = current_tracer()
        with tracer.span(
            f"llm {model or self.default_model}", kind="llm", attributes=self._attributes(model)
        ) as span:
            response = await self.inner.generate(messages, model=model, tools=tools, **kwargs)
            _record(span, model or self.default_model, response.usage, response.finish_reason)
            if response.model:
                span.set_attribute("gen_ai.response.model", response.model)
            if tracer.capture_content:
                span.record_content(input=list(messages), output=dict(response.message))
            return response

    async def stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[LLMChunk, None]:
        tracer = current_tracer()
        with tracer.span(
            f"llm {model or self.default_model}", kind="llm", attributes=self._attributes(model)
        ) as span:
            usage: Usage | None = None
            finish: str | None = None
            text: list[str] | None = [] if tracer.capture_content else None
            calls: list[ToolCall] = []
            async for chunk in self.inner.stream(messages, model=model, tools=tools, **kwargs):
                usage = chunk.usage or usage
                finish = chunk.finish_reason or finish
                if text is not None:
                    text.append(chunk.delta)
                    calls += chunk.tool_calls
                yield chunk
            _record(span, model or self.default_model, usage, finish)
            if text is not None:
                span.record_content(input=list(messages), output=_answer("".join(text), calls))

    async def aclose(self) -> None:
        await self.inner.aclose()


def _answer(content: str, tool_calls: Sequence[ToolCall]) -> dict[str, Any]:
    answer: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        answer["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in tool_calls]
    return answer


def _record(span: Span, model: str, usage: Usage | None, finish_reason: str | None) -> None:
    if usage is not None:
        if token_meter.enabled:
            token_meter.add(model, usage)
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
    if finish_reason:
        span.set_attribute("gen_ai.response.finish_reason", finish_reason)

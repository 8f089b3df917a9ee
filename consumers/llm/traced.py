"""An ``LLMClient`` that wraps each call in a span of the process's tracer: model, provider,
token usage and status (never the messages)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from agentstream.consumers.llm.types import LLMChunk, LLMClient, LLMResponse, ToolSpec, Usage
from agentstream.consumers.tracing import current_tracer
from agentstream.core.tracing import Span


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
        with current_tracer().span(
            f"llm {model or self.default_model}", attributes=self._attributes(model)
        ) as span:
            response = await self.inner.generate(messages, model=model, tools=tools, **kwargs)
            _record(span, response.usage, response.finish_reason)
            return response

    async def stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[LLMChunk, None]:
        with current_tracer().span(
            f"llm {model or self.default_model}", attributes=self._attributes(model)
        ) as span:
            usage: Usage | None = None
            finish: str | None = None
            async for chunk in self.inner.stream(messages, model=model, tools=tools, **kwargs):
                usage = chunk.usage or usage
                finish = chunk.finish_reason or finish
                yield chunk
            _record(span, usage, finish)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _record(span: Span, usage: Usage | None, finish_reason: str | None) -> None:
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
    if finish_reason:
        span.set_attribute("gen_ai.response.finish_reason", finish_reason)

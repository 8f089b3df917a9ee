"""The ``openai`` provider: the official async client, pointed anywhere with ``OPENAI_BASE_URL``.

``max_retries=0``: the runtime retries (with backoff, fencing and an attempt cap), not the SDK,
whose hidden retries would multiply ours. Streams ask for usage in the last chunk
(``stream_options={"include_usage": True}``) so streamed runs are accounted too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from agentstream.consumers.llm.errors import raise_mapped
from agentstream.consumers.llm.types import (
    LLMChunk,
    LLMResponse,
    ToolCall,
    ToolSpec,
    Usage,
    assistant_message,
)
from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings


class ChunkAssembler:
    """OpenAI-format stream chunks (as dicts) -> ``LLMChunk``s; tool-call fragments are joined
    by ``index`` and yielded whole when the choice finishes. Shared with the litellm provider."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def feed(self, chunk: Mapping[str, Any]) -> list[LLMChunk]:
        out: list[LLMChunk] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                out.append(LLMChunk(delta=text))
            for fragment in delta.get("tool_calls") or ():
                slot = self._calls.setdefault(
                    int(fragment.get("index") or 0), {"id": "", "name": "", "arguments": ""}
                )
                function = fragment.get("function") or {}
                slot["id"] = fragment.get("id") or slot["id"]
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason")
            if finish:
                out.append(LLMChunk(tool_calls=self._drain(), finish_reason=finish))
        usage = chunk.get("usage")
        if usage:
            out.append(LLMChunk(usage=usage_from_openai(usage)))
        return out

    def close(self) -> list[LLMChunk]:
        """Tool calls of a stream that ended without a finish_reason (some compatible servers)."""
        calls = self._drain()
        return [LLMChunk(tool_calls=calls)] if calls else []

    def _drain(self) -> tuple[ToolCall, ...]:
        calls = tuple(
            ToolCall(slot["id"], slot["name"], slot["arguments"] or "{}")
            for _, slot in sorted(self._calls.items())
        )
        self._calls.clear()
        return calls


def usage_from_openai(raw: Mapping[str, Any]) -> Usage:
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    return Usage(prompt, completion, int(raw.get("total_tokens") or prompt + completion))


def response_from_openai(raw: Mapping[str, Any], model: str) -> LLMResponse:
    choice = (raw.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    calls = tuple(ToolCall.from_openai(call) for call in message.get("tool_calls") or ())
    return LLMResponse(
        message=assistant_message(message.get("content"), calls),
        tool_calls=calls,
        usage=usage_from_openai(raw.get("usage") or {}),
        finish_reason=choice.get("finish_reason"),
        model=str(raw.get("model") or model),
    )


def request_args(
    messages: Sequence[Mapping[str, Any]],
    model: str,
    tools: Sequence[ToolSpec] | None,
    kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    args: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages], **kwargs}
    if tools:
        args["tools"] = [dict(t) for t in tools]
    return args


class OpenAIClient:
    provider = "openai"

    def __init__(self, client: Any, model: str) -> None:
        self._client = client
        self.default_model = model

    @classmethod
    def from_settings(cls, settings: Settings, model: str, **options: Any) -> OpenAIClient:
        import openai

        api_key = settings.OPENAI_API_KEY or os.environ.get("OPENAI_API_KEY")
        if not api_key and not settings.OPENAI_BASE_URL:
            raise ConfigurationError(
                "the openai provider needs an API key: set OPENAI_API_KEY (setting or environment), "
                "or OPENAI_BASE_URL for a local OpenAI-compatible server, or MODEL_PROVIDER='fake'"
            )
        client = openai.AsyncOpenAI(
            api_key=api_key or "not-needed",  # local compatible servers often take no key
            base_url=settings.OPENAI_BASE_URL,
            max_retries=0,
            timeout=options.pop("timeout_s", settings.STEP_TIMEOUT_SECONDS),
            **options,
        )
        return cls(client, model)

    async def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> LLMResponse:
        model = model or self.default_model
        try:
            completion = await self._client.chat.completions.create(
                **request_args(messages, model, tools, kwargs)
            )
        except Exception as exc:
            raise_mapped("openai", exc)
            raise
        return response_from_openai(completion.model_dump(), model)

    async def stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[LLMChunk, None]:
        args = request_args(messages, model or self.default_model, tools, kwargs)
        args["stream"] = True
        args.setdefault("stream_options", {"include_usage": True})
        assembler = ChunkAssembler()
        try:
            response = await self._client.chat.completions.create(**args)
        except Exception as exc:
            raise_mapped("openai", exc)
            raise
        try:
            async for chunk in response:
                for out in assembler.feed(chunk.model_dump()):
                    yield out
            for out in assembler.close():
                yield out
        except Exception as exc:
            raise_mapped("openai", exc)
            raise
        finally:
            # Runs on cancellation and on aclose() too: the connection closes now, so the provider
            # stops generating (and billing) at once.
            await response.close()

    async def aclose(self) -> None:
        await self._client.close()

"""The ``openai`` provider: the official async client, pointed anywhere with ``OPENAI_BASE_URL``.

``max_retries=0``: the runtime retries (with backoff, fencing and an attempt cap), not the SDK,
whose hidden retries would multiply ours. Streams ask for usage in the last chunk
(``stream_options={"include_usage": True}``) so streamed runs are accounted too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from agentstream.consumers.llm.errors import raise_mapped
from agentstream.consumers.llm.streaming import CallDeadline
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
    into whole calls, yielded when the choice finishes. Shared with the litellm provider.

    A fragment continues the call last seen at its ``index``, unless it names another ``id``:
    then it starts a new call (Gemini's OpenAI-compatible endpoint sends parallel calls all at
    index 0). Without an ``index``, a fragment with a new ``id`` takes the next one of a running
    counter and one without continues the latest call. Calls come out by index, then arrival."""

    def __init__(self) -> None:
        self._calls: list[_CallSlot] = []  # in arrival order
        self._at_index: dict[int, _CallSlot] = {}  # the latest call at each index
        self._next_index = 0  # for fragments without an index

    def feed(self, chunk: Mapping[str, Any]) -> list[LLMChunk]:
        out: list[LLMChunk] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                out.append(LLMChunk(delta=text))
            for fragment in delta.get("tool_calls") or ():
                self._slot_for(fragment).add(fragment)
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

    def _slot_for(self, fragment: Mapping[str, Any]) -> _CallSlot:
        call_id = str(fragment.get("id") or "")
        raw_index = fragment.get("index")
        if raw_index is None:
            latest = self._calls[-1] if self._calls else None
            if latest is not None and (not call_id or not latest.id or call_id == latest.id):
                return latest
            index = self._next_index
        else:
            index = int(raw_index)
            current = self._at_index.get(index)
            if current is not None and (not call_id or not current.id or call_id == current.id):
                return current
        slot = _CallSlot(index, len(self._calls))
        self._calls.append(slot)
        self._at_index[index] = slot
        self._next_index = max(self._next_index, index + 1)
        return slot

    def _drain(self) -> tuple[ToolCall, ...]:
        calls = tuple(
            ToolCall(slot.id, slot.name, slot.arguments or "{}")
            for slot in sorted(self._calls, key=lambda slot: (slot.index, slot.arrival))
        )
        self._calls.clear()
        self._at_index.clear()
        self._next_index = 0
        return calls


@dataclass(slots=True)
class _CallSlot:
    """One tool call being assembled from its fragments."""

    index: int
    arrival: int
    id: str = ""
    name: str = ""
    arguments: str = ""

    def add(self, fragment: Mapping[str, Any]) -> None:
        function = fragment.get("function") or {}
        self.id = str(fragment.get("id") or "") or self.id
        self.name += function.get("name") or ""
        self.arguments += function.get("arguments") or ""


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

    def __init__(self, client: Any, model: str, *, timeout_s: float | None = None) -> None:
        self._client = client
        self.default_model = model
        self.timeout_s = timeout_s  # the whole call's deadline (``CallDeadline``); None: unbounded

    @classmethod
    def from_settings(cls, settings: Settings, model: str, **options: Any) -> OpenAIClient:
        import openai

        # The settings, else the environment variables the SDK reads (the documented fallback).
        api_key = settings.OPENAI_API_KEY or os.environ.get("OPENAI_API_KEY")
        base_url = settings.OPENAI_BASE_URL or os.environ.get("OPENAI_BASE_URL") or None
        if not api_key and not base_url:
            raise ConfigurationError(
                "the openai provider needs an API key: set OPENAI_API_KEY (setting or environment), "
                "or OPENAI_BASE_URL for a local OpenAI-compatible server, or MODEL_PROVIDER='fake'"
            )
        timeout_s = options.pop("timeout_s", settings.STEP_TIMEOUT_SECONDS)
        client = openai.AsyncOpenAI(
            api_key=api_key or "not-needed",  # local compatible servers often take no key
            base_url=base_url,
            max_retries=0,
            timeout=timeout_s,  # per read; ``CallDeadline`` bounds the whole call
            **options,
        )
        return cls(client, model, timeout_s=timeout_s if isinstance(timeout_s, int | float) else None)

    async def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> LLMResponse:
        model = model or self.default_model
        deadline = CallDeadline("openai", self.timeout_s)
        try:
            completion = await deadline.bound(
                self._client.chat.completions.create(**request_args(messages, model, tools, kwargs))
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
        deadline = CallDeadline("openai", self.timeout_s)
        try:
            response = await deadline.bound(self._client.chat.completions.create(**args))
        except Exception as exc:
            raise_mapped("openai", exc)
            raise
        try:
            async with aclosing(deadline.chunks(response)) as chunks:
                async for chunk in chunks:
                    for out in assembler.feed(chunk.model_dump()):
                        yield out
            for out in assembler.close():
                yield out
        except Exception as exc:
            raise_mapped("openai", exc)
            raise
        finally:
            # Runs on cancellation, on aclose() and when the deadline hits: the connection closes
            # now, so the provider stops generating (and billing) at once.
            await response.close()

    async def aclose(self) -> None:
        await self._client.close()

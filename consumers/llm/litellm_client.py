"""The ``litellm`` provider (extra ``agentstream[litellm]``): any model litellm routes to.

litellm speaks the OpenAI format already, so chunks go through the OpenAI assembler; its
exceptions carry ``status_code`` like the SDKs', so the same error mapping applies.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from agentstream.consumers.llm.config import missing_extra
from agentstream.consumers.llm.errors import raise_mapped
from agentstream.consumers.llm.openai_client import ChunkAssembler, request_args, response_from_openai
from agentstream.consumers.llm.types import LLMChunk, LLMResponse, ToolSpec
from agentstream.core.settings import Settings


def _dump(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    dumped: dict[str, Any] = obj.model_dump()
    return dumped


class LiteLLMClient:
    provider = "litellm"

    def __init__(self, module: Any, model: str, options: Mapping[str, Any]) -> None:
        self._litellm = module
        self.default_model = model
        self._options = dict(options)

    @classmethod
    def from_settings(cls, settings: Settings, model: str, **options: Any) -> LiteLLMClient:
        try:
            litellm = importlib.import_module("litellm")  # optional, and without type stubs
        except ImportError as exc:
            raise missing_extra("litellm", "litellm") from exc
        options.setdefault("timeout", settings.STEP_TIMEOUT_SECONDS)
        options.setdefault("num_retries", 0)  # the runtime retries
        return cls(litellm, model, options)

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
            raw = await self._litellm.acompletion(
                **request_args(messages, model, tools, {**self._options, **kwargs})
            )
        except Exception as exc:
            raise_mapped("litellm", exc)
            raise
        return response_from_openai(_dump(raw), model)

    async def stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[LLMChunk, None]:
        args = request_args(messages, model or self.default_model, tools, {**self._options, **kwargs})
        args["stream"] = True
        args.setdefault("stream_options", {"include_usage": True})
        assembler = ChunkAssembler()
        try:
            response = await self._litellm.acompletion(**args)
        except Exception as exc:
            raise_mapped("litellm", exc)
            raise
        try:
            async for chunk in response:
                for out in assembler.feed(_dump(chunk)):
                    yield out
            for out in assembler.close():
                yield out
        except Exception as exc:
            raise_mapped("litellm", exc)
            raise
        finally:
            close = getattr(response, "aclose", None) or getattr(response, "close", None)
            if close is not None:
                result = close()
                if hasattr(result, "__await__"):
                    await result

    async def aclose(self) -> None:
        return None  # litellm keeps its own module-level clients

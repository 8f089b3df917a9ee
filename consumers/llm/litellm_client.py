"""The ``litellm`` provider (extra ``agentstream[litellm]``): any model litellm routes to.

litellm speaks the OpenAI format already, so chunks go through the OpenAI assembler; its
exceptions carry ``status_code`` like the SDKs', so the same error mapping applies.

The settings' ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` and ``ANTHROPIC_API_KEY`` go into the calls
that litellm routes to that provider (as ``api_key`` / ``api_base``), unless the options or the
call name their own. ``STEP_TIMEOUT_SECONDS`` (or ``timeout_s``) bounds each whole call.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from agentstream.consumers.llm.config import missing_extra
from agentstream.consumers.llm.errors import raise_mapped
from agentstream.consumers.llm.openai_client import ChunkAssembler, request_args, response_from_openai
from agentstream.consumers.llm.streaming import CallDeadline
from agentstream.consumers.llm.types import LLMChunk, LLMResponse, ToolSpec
from agentstream.core.settings import Settings


def _dump(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    dumped: dict[str, Any] = obj.model_dump()
    return dumped


def provider_credentials(settings: Settings) -> dict[str, dict[str, str]]:
    """litellm provider name -> the ``api_key`` / ``api_base`` options the settings give it."""
    given = {
        "openai": {"api_key": settings.OPENAI_API_KEY, "api_base": settings.OPENAI_BASE_URL},
        "anthropic": {"api_key": settings.ANTHROPIC_API_KEY},
    }
    return {
        provider: {option: value for option, value in options.items() if value}
        for provider, options in given.items()
        if any(options.values())
    }


class LiteLLMClient:
    provider = "litellm"

    def __init__(
        self,
        module: Any,
        model: str,
        options: Mapping[str, Any],
        *,
        credentials: Mapping[str, Mapping[str, str]] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self._litellm = module
        self.default_model = model
        self._options = dict(options)
        self._credentials = {name: dict(values) for name, values in (credentials or {}).items()}
        self.timeout_s = timeout_s  # the whole call's deadline (``CallDeadline``); None: unbounded

    @classmethod
    def from_settings(cls, settings: Settings, model: str, **options: Any) -> LiteLLMClient:
        try:
            litellm = importlib.import_module("litellm")  # optional, and without type stubs
        except ImportError as exc:
            raise missing_extra("litellm", "litellm") from exc
        timeout_s = options.pop("timeout_s", options.get("timeout", settings.STEP_TIMEOUT_SECONDS))
        options.setdefault("timeout", timeout_s)  # litellm's, per request
        options.setdefault("num_retries", 0)  # the runtime retries
        return cls(
            litellm,
            model,
            options,
            credentials=provider_credentials(settings),
            timeout_s=timeout_s if isinstance(timeout_s, int | float) else None,
        )

    def _args(
        self,
        messages: Sequence[Mapping[str, Any]],
        model: str,
        tools: Sequence[ToolSpec] | None,
        kwargs: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The call's arguments: the settings' credentials for its provider, then the options,
        then the call's own keyword arguments (each overrides the one before)."""
        options = {**self._options, **kwargs}
        credentials = self._credentials.get(self._provider_of(model, options.get("custom_llm_provider")), {})
        return request_args(messages, model, tools, {**credentials, **options})

    def _provider_of(self, model: str, custom_provider: Any) -> str:
        """The provider litellm routes ``model`` to; "" when it cannot tell (the call then fails
        with litellm's own error, mapped as usual)."""
        try:
            _model, provider, _key, _base = self._litellm.get_llm_provider(
                model=model, custom_llm_provider=custom_provider
            )
        except Exception:
            return ""
        return str(provider or "")

    async def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> LLMResponse:
        model = model or self.default_model
        deadline = CallDeadline("litellm", self.timeout_s)
        try:
            raw = await deadline.bound(
                self._litellm.acompletion(**self._args(messages, model, tools, kwargs))
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
        args = self._args(messages, model or self.default_model, tools, kwargs)
        args["stream"] = True
        args.setdefault("stream_options", {"include_usage": True})
        assembler = ChunkAssembler()
        deadline = CallDeadline("litellm", self.timeout_s)
        try:
            response = await deadline.bound(self._litellm.acompletion(**args))
        except Exception as exc:
            raise_mapped("litellm", exc)
            raise
        try:
            async with aclosing(deadline.chunks(response)) as chunks:
                async for chunk in chunks:
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

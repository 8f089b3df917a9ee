"""The ``anthropic`` provider (extra ``agentstream[anthropic]``); mapping in ``anthropic_format``."""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from agentstream.consumers.errors import PermanentFailure
from agentstream.consumers.llm.anthropic_format import (
    StreamAssembler,
    options_to_anthropic,
    response_from_anthropic,
    to_anthropic,
    tools_to_anthropic,
)
from agentstream.consumers.llm.config import missing_extra
from agentstream.consumers.llm.errors import raise_mapped
from agentstream.consumers.llm.streaming import CallDeadline
from agentstream.consumers.llm.types import LLMChunk, LLMResponse, ToolSpec
from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; override per call with max_tokens=


def request_args(
    messages: Sequence[Mapping[str, Any]],
    model: str,
    tools: Sequence[ToolSpec] | None,
    kwargs: Mapping[str, Any],
    accepted: frozenset[str] | None = None,
) -> dict[str, Any]:
    """The ``messages.create`` arguments. ``kwargs`` may be OpenAI's (mapped by
    ``options_to_anthropic``); a name left that the SDK does not take (``accepted``, from its
    signature) is a ``PermanentFailure``, not the SDK's ``TypeError``, which would be retried."""
    system, converted = to_anthropic(messages)
    options = options_to_anthropic(kwargs, has_tools=bool(tools))
    if "stream" in options:
        raise PermanentFailure("anthropic: stream= is not an option; call .stream() to stream")
    unknown = sorted(name for name in options if accepted is not None and name not in accepted)
    if unknown:
        raise PermanentFailure(
            f"anthropic: {', '.join(f'{name}=' for name in unknown)} not taken by this SDK's "
            f"messages.create (it takes {', '.join(sorted(accepted or ()))}); "
            "send other API fields in extra_body"
        )
    args: dict[str, Any] = {"model": model, "messages": converted, **options}
    if args.get("max_tokens") is None:
        args["max_tokens"] = DEFAULT_MAX_TOKENS
    if system:
        args["system"] = system
    if tools:
        args["tools"] = tools_to_anthropic(tools)
    return args


def sdk_options(create: Any) -> frozenset[str] | None:
    """The keyword names ``create`` takes (but ``stream``), or ``None`` when it takes any
    (``**kwargs``) or has no signature to read."""
    try:
        parameters = inspect.signature(create).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters) - {"stream"}


class AnthropicClient:
    provider = "anthropic"

    def __init__(self, client: Any, model: str, *, timeout_s: float | None = None) -> None:
        self._client = client
        self.default_model = model
        self.timeout_s = timeout_s  # the whole call's deadline (``CallDeadline``); None: unbounded
        self._accepted = sdk_options(getattr(getattr(client, "messages", None), "create", None))

    @classmethod
    def from_settings(cls, settings: Settings, model: str, **options: Any) -> AnthropicClient:
        try:
            import anthropic
        except ImportError as exc:
            raise missing_extra("anthropic", "anthropic") from exc
        api_key = settings.ANTHROPIC_API_KEY or os.environ.get("ANTHROPIC_API_KEY")
        if not api_key:
            raise ConfigurationError(
                "the anthropic provider needs an API key: set ANTHROPIC_API_KEY (setting or environment)"
            )
        timeout_s = options.pop("timeout_s", settings.STEP_TIMEOUT_SECONDS)
        client = anthropic.AsyncAnthropic(
            api_key=api_key,
            max_retries=0,  # the runtime retries, with backoff and an attempt cap
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
        args = request_args(messages, model, tools, kwargs, self._accepted)
        deadline = CallDeadline("anthropic", self.timeout_s)
        try:
            message = await deadline.bound(self._client.messages.create(**args))
        except Exception as exc:
            raise_mapped("anthropic", exc)
            raise
        return response_from_anthropic(message.model_dump(), model)

    async def stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[LLMChunk, None]:
        args = request_args(messages, model or self.default_model, tools, kwargs, self._accepted)
        assembler = StreamAssembler()
        deadline = CallDeadline("anthropic", self.timeout_s)
        try:
            events = await deadline.bound(self._client.messages.create(stream=True, **args))
        except Exception as exc:
            raise_mapped("anthropic", exc)
            raise
        try:
            # ``ping`` events and steady deltas do not extend the deadline: it bounds the call.
            async with aclosing(deadline.chunks(events)) as stream:
                async for event in stream:
                    for chunk in assembler.feed(event.model_dump()):
                        yield chunk
        except Exception as exc:
            raise_mapped("anthropic", exc)
            raise
        finally:
            # on cancellation and when the deadline hits too: the provider stops generating at once
            await events.close()

    async def aclose(self) -> None:
        await self._client.close()

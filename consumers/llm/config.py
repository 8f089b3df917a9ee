"""Which provider and model an agent gets: ``get_llm_client(provider=None, model=None)``.

Settings come from the caller (``settings=``) or from the one process-wide ``Settings`` that the
worker / Django layer hands to ``configure`` at start-up (the only global here). Without either,
the defaults of ``Settings()`` apply. API keys and the OpenAI base URL: the setting, else the
``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` / ``OPENAI_BASE_URL`` environment variables (the one
documented fallback, as the SDKs read them), read by the providers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentstream.consumers.llm.types import LLMClient
from agentstream.consumers.tracing import current_tracer
from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings
from agentstream.core.tracing import NoopTracer

ProviderFactory = Callable[..., LLMClient]  # (settings, model, **options) -> LLMClient

_configured: Settings | None = None


def configure(settings: Settings | None) -> None:
    """Set (or, with ``None``, clear) the settings that ``get_llm_client()`` reads by default."""
    global _configured
    _configured = settings


def current_settings() -> Settings:
    return _configured if _configured is not None else Settings()


def _openai(settings: Settings, model: str, **options: Any) -> LLMClient:
    from agentstream.consumers.llm.openai_client import OpenAIClient

    return OpenAIClient.from_settings(settings, model, **options)


def _anthropic(settings: Settings, model: str, **options: Any) -> LLMClient:
    from agentstream.consumers.llm.anthropic_client import AnthropicClient

    return AnthropicClient.from_settings(settings, model, **options)


def _litellm(settings: Settings, model: str, **options: Any) -> LLMClient:
    from agentstream.consumers.llm.litellm_client import LiteLLMClient

    return LiteLLMClient.from_settings(settings, model, **options)


def _fake(settings: Settings, model: str, **options: Any) -> LLMClient:
    from agentstream.consumers.llm.fake import FakeLLMClient

    return FakeLLMClient(model=model, **options)


PROVIDERS: dict[str, ProviderFactory] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "litellm": _litellm,
    "fake": _fake,
}


def register_provider(name: str, factory: ProviderFactory) -> None:
    """Add a provider: ``factory(settings, model, **options)`` returns an ``LLMClient``."""
    PROVIDERS[name] = factory


def get_llm_client(
    provider: str | None = None, model: str | None = None, *, settings: Settings | None = None, **options: Any
) -> LLMClient:
    """A client for ``provider`` (default ``MODEL_PROVIDER``) whose default model is ``model``
    (default ``DEFAULT_MODEL``); ``options`` go to the provider (e.g. ``token_delay_s`` for fake)."""
    settings = settings if settings is not None else current_settings()
    name = (provider or settings.MODEL_PROVIDER).lower()
    factory = PROVIDERS.get(name)
    if factory is None:
        raise ConfigurationError(
            f"unknown LLM provider {name!r}; use one of {', '.join(sorted(PROVIDERS))} "
            "(setting MODEL_PROVIDER) or register_provider() your own"
        )
    client = factory(settings, model or settings.DEFAULT_MODEL, **options)
    from agentstream.consumers.llm.traced import TracedLLMClient, token_meter

    if isinstance(current_tracer(), NoopTracer) and not token_meter.enabled:
        return client
    return TracedLLMClient(client)


def missing_extra(provider: str, module: str) -> ConfigurationError:
    return ConfigurationError(
        f"the {provider} provider needs the {module!r} package: pip install 'agentstream[{provider}]'"
    )

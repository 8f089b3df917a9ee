"""The process's tracer (``TRACER`` setting): workers set it at start, attempts, LLM clients and
tools read it. Tests and embedders pass their own with ``use_tracer``."""

from __future__ import annotations

import os

from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings
from agentstream.core.tracing import TRACERS, NoopTracer, Tracer

_tracer: Tracer = NoopTracer()


def use_tracer(tracer: Tracer) -> None:
    global _tracer
    _tracer = tracer


def current_tracer() -> Tracer:
    return _tracer


def tracer_name(settings: Settings) -> str:
    """``TRACER``; the seed's ``LANGFUSE_ENABLED = True`` still selects Langfuse when it is unset."""
    return "langfuse" if settings.TRACER == "noop" and settings.LANGFUSE_ENABLED else settings.TRACER


def tracer_for(name: str, settings: Settings | None = None) -> Tracer:
    """``noop``; ``otel`` (the ``otel`` extra: spans go to the global OpenTelemetry provider);
    ``langfuse`` (the ``langfuse`` extra: keys and host from the ``LANGFUSE_*`` settings, else the
    SDK's own ``LANGFUSE_*`` environment variables)."""
    settings = settings or Settings()
    if name == "noop":
        return NoopTracer()
    if name == "otel":
        try:
            from agentstream.consumers.otel import OTelTracer
        except ImportError:
            raise ConfigurationError(
                "TRACER = 'otel' needs opentelemetry-sdk: pip install 'agentstream[otel]'"
            ) from None
        return OTelTracer(capture_content=settings.TRACE_CONTENT)
    if name == "langfuse":
        return _langfuse_tracer(settings)
    raise ConfigurationError(f"TRACER = {name!r} is unknown; use one of {', '.join(TRACERS)}")


def _langfuse_tracer(settings: Settings) -> Tracer:
    try:
        import langfuse
        from langfuse import Langfuse

        from agentstream.consumers.langfuse_tracing import LangfuseTracer
    except ImportError:
        raise ConfigurationError(
            "TRACER = 'langfuse' needs the Langfuse SDK: pip install 'agentstream[langfuse]'"
        ) from None
    if not hasattr(Langfuse, "start_observation"):  # v2 (the seed's): every attempt would fail
        found = getattr(langfuse, "__version__", "an older one")
        raise ConfigurationError(
            f"TRACER = 'langfuse' needs the Langfuse SDK 3.4 or later, found {found}: "
            "pip install -U 'agentstream[langfuse]'"
        )
    # read here, at process start: the SDK would otherwise warn once and drop every span
    public_key = settings.LANGFUSE_PUBLIC_KEY or os.environ.get("LANGFUSE_PUBLIC_KEY")
    secret_key = settings.LANGFUSE_SECRET_KEY or os.environ.get("LANGFUSE_SECRET_KEY")
    if not (public_key and secret_key):
        raise ConfigurationError(
            "TRACER = 'langfuse' needs LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY "
            "(AGENTSTREAM settings or the environment)"
        )
    client = Langfuse(public_key=public_key, secret_key=secret_key, host=settings.LANGFUSE_HOST)
    return LangfuseTracer(client, capture_content=settings.TRACE_CONTENT)

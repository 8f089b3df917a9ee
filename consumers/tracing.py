"""The process's tracer (``TRACER`` setting): workers set it at start, attempts, LLM clients and
tools read it. Tests and embedders pass their own with ``use_tracer``."""

from __future__ import annotations

from agentstream.core.errors import ConfigurationError
from agentstream.core.tracing import NoopTracer, Tracer

_tracer: Tracer = NoopTracer()


def use_tracer(tracer: Tracer) -> None:
    global _tracer
    _tracer = tracer


def current_tracer() -> Tracer:
    return _tracer


def tracer_for(name: str) -> Tracer:
    """``noop`` or ``otel`` (the ``otel`` extra: spans go to the global OpenTelemetry provider)."""
    if name == "noop":
        return NoopTracer()
    if name == "otel":
        try:
            from agentstream.consumers.otel import OTelTracer
        except ImportError:
            raise ConfigurationError(
                "TRACER = 'otel' needs opentelemetry-sdk: pip install 'agentstream[otel]'"
            ) from None
        return OTelTracer()
    raise ConfigurationError(f"TRACER = {name!r} is unknown; use noop or otel")

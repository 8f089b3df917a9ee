"""The process's tracer (``TRACER`` setting): workers set it at start, attempts, LLM clients and
tools read it. Tests and embedders pass their own with ``use_tracer``.

Tracing never fails a run: ``use_tracer`` wraps the tracer in a ``GuardedTracer``, whose spans
catch what the tracer (or its exporter) raises on a span's start, in its methods and on its end,
log it once per kind of failure, and go on without that span. What the traced code raises, a
cancel included, passes through a span unchanged, whatever the tracer does with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings
from agentstream.core.tracing import NOOP_SPAN, TRACERS, AttributeValue, NoopTracer, Span, SpanKind, Tracer

log = logging.getLogger("agentstream.tracing")


class GuardedTracer:
    """``inner`` made harmless: an ``Exception`` it raises is logged at WARNING, once per place and
    type of exception (a failing exporter would otherwise log once per span, thousands a second),
    and the span goes on as a no-op. ``BaseException`` (a cancel, ``KeyboardInterrupt``) is not
    caught."""

    def __init__(self, inner: Tracer) -> None:
        self.inner = inner
        self._reported: set[tuple[str, type[Exception]]] = set()

    @property
    def capture_content(self) -> bool:
        try:
            return self.inner.capture_content
        except Exception as exc:
            self.failed("capture_content", exc)
            return False

    @capture_content.setter
    def capture_content(self, value: bool) -> None:
        self.inner.capture_content = value

    def span(
        self,
        name: str,
        *,
        kind: SpanKind = "internal",
        traceparent: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> contextlib.AbstractContextManager[Span]:
        return _GuardedSpanContext(self, name, kind, traceparent, attributes)

    def flush(self) -> None:
        self.guarded("flush", self.inner.flush)

    def guarded(self, what: str, call: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """``call(*args, **kwargs)``; what it raises (an ``Exception``) is ``failed(what, ...)``."""
        try:
            call(*args, **kwargs)
        except Exception as exc:
            self.failed(what, exc)

    def failed(self, what: str, exc: Exception) -> None:
        if (what, type(exc)) in self._reported:
            return
        self._reported.add((what, type(exc)))
        log.warning(
            "tracing: %s of %s raised %s: %s; the run goes on, untraced where the tracer fails "
            "(logged once per kind of failure)",
            what,
            type(self.inner).__name__,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )


class _GuardedSpanContext(contextlib.AbstractContextManager[Span]):
    """The inner tracer's span context, entered and exited under guard."""

    def __init__(
        self,
        guard: GuardedTracer,
        name: str,
        kind: SpanKind,
        traceparent: str | None,
        attributes: Mapping[str, AttributeValue] | None,
    ) -> None:
        self._guard = guard
        self._args = (name, kind, traceparent, attributes)
        self._inner: contextlib.AbstractContextManager[Span] | None = None

    def __enter__(self) -> Span:
        name, kind, traceparent, attributes = self._args
        try:
            inner = self._guard.inner.span(name, kind=kind, traceparent=traceparent, attributes=attributes)
            span = inner.__enter__()
        except Exception as exc:
            self._guard.failed("opening a span", exc)
            return NOOP_SPAN
        self._inner = inner
        return _GuardedSpan(self._guard, span)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:  # never suppresses: what passed through goes on, even if the inner span swallowed it
        inner, self._inner = self._inner, None
        if inner is not None:
            try:
                inner.__exit__(exc_type, exc, tb)
            except Exception as raised:
                if raised is not exc:  # not what passed through, re-raised: the tracer's own
                    self._guard.failed("closing a span", raised)


class _GuardedSpan:
    def __init__(self, guard: GuardedTracer, inner: Span) -> None:
        self._guard = guard
        self._inner = inner

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._guard.guarded("set_attribute", self._inner.set_attribute, key, value)

    def record_error(self, message: str) -> None:
        self._guard.guarded("record_error", self._inner.record_error, message)

    def record_warning(self, message: str) -> None:
        self._guard.guarded("record_warning", self._inner.record_warning, message)

    def record_content(self, *, input: Any = None, output: Any = None) -> None:
        self._guard.guarded("record_content", self._inner.record_content, input=input, output=output)


_tracer: Tracer = NoopTracer()


def use_tracer(tracer: Tracer) -> None:
    """Make ``tracer`` the process's, in a ``GuardedTracer`` (its ``inner`` is ``tracer``); a
    ``NoopTracer`` as it is, which attempts recognise to open no span at all."""
    global _tracer
    _tracer = (
        tracer if type(tracer) is NoopTracer or isinstance(tracer, GuardedTracer) else GuardedTracer(tracer)
    )


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

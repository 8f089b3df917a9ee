"""One frozen, typed ``Settings`` object, parsed once at the edge.

Inside Django it comes from the ``AGENTSTREAM`` dict (``agentstream.django_app.conf``); outside,
from keyword arguments or from ``AGENTSTREAM_<KEY>`` environment variables. An unknown key, a
value of the wrong type, or a django-agent-runtime key that means nothing here is an error that
says what to do, never a bare ``TypeError``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from agentstream.core.errors import ConfigurationError
from agentstream.core.events import Visibility
from agentstream.core.keys import Keys
from agentstream.core.tracing import TRACERS

POLICIES = ("enqueue", "reject", "interrupt")

# AGENTSTREAM_* environment variables that configure the demo process, not the runtime.
ENV_ONLY_NAMES = ("DEMO_TOKEN", "DEMO_DIR", "LOG_LEVEL")

# django-agent-runtime settings that have no meaning in agentstream, with what to do instead.
SEED_ONLY_KEYS: Mapping[str, str] = {
    "QUEUE_BACKEND": "the queue is always Redis Streams consumer groups; remove it",
    "EVENT_BUS_BACKEND": "events always live in Redis Streams; remove it",
    "ENABLE_SSE": "SSE is always served from the run streams; remove it",
    "ENABLE_CHANNELS": "Django Channels is not used; remove it",
    "HEARTBEAT_INTERVAL_SECONDS": "the heartbeat runs every LEASE_TTL_SECONDS/3; remove it",
    "EVENT_TTL_SECONDS": "use RUN_RETENTION_SECONDS",
    "DEFAULT_MAX_ATTEMPTS": "use MAX_RETRIES",
    "SWALLOW_EXCEPTIONS": "errors always become run.failed events; remove it",
    "LITELLM_ENABLED": "set MODEL_PROVIDER = 'litellm' instead",
    "RUN_MODEL": "read-models are agentstream's own; project into yours with a Projection",
    "CONVERSATION_MODEL": "read-models are agentstream's own; project into yours with a Projection",
}


@dataclass(frozen=True, slots=True)
class Settings:
    # Redis and partitioning
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    KEY_PREFIX: str = "as"
    PARTITIONS: int = 16
    ALLOW_EVICTING_REDIS: bool = False  # start even if maxmemory-policy evicts (runs may be lost)
    # workers
    LEASE_TTL_SECONDS: float = 30.0
    RUN_TIMEOUT_SECONDS: float = 900.0
    STEP_TIMEOUT_SECONDS: float = 120.0
    MAX_RETRIES: int = 3
    RETRY_BACKOFF_BASE: float = 2.0
    RETRY_BACKOFF_MAX: float = 300.0
    SHUTDOWN_GRACE_SECONDS: float = 30.0
    DEFAULT_PROCESSES: int = 1
    DEFAULT_CONCURRENCY: int = 10
    RUNTIME_REGISTRY: tuple[str, ...] = ()
    DEFAULT_CONVERSATION_POLICY: str = "enqueue"
    # threads per worker process for sync tools (consumers.tools.SyncToolThreads), not the loop's
    TOOL_THREADS: int = 32
    # events
    EVENT_VISIBILITY: Mapping[str, str] = field(default_factory=dict)
    DEBUG_MODE: bool = False
    PERSIST_TOKEN_DELTAS: bool = False
    MAX_EVENT_BYTES: int = 1024 * 1024
    RUN_RETENTION_SECONDS: int = 7 * 24 * 3600
    IDEMPOTENCY_TTL_SECONDS: int = 24 * 3600
    # projections
    PROJECTOR_BATCH: int = 500
    PROJECTIONS: tuple[str, ...] = ()
    LOG_RETENTION_SECONDS: int = 7 * 24 * 3600
    # HTTP and SSE
    SSE_KEEPALIVE_SECONDS: float = 15.0
    SSE_RETRY_MS: int = 3000
    SSE_CLIENT_BUFFER: int = 1000
    MAX_REQUEST_BYTES: int = 1024 * 1024
    ANONYMOUS_SESSION_MODEL: str | None = None
    ANONYMOUS_SESSION_TTL_SECONDS: int = 30 * 24 * 3600  # max age of a signed anonymous token
    AUTHZ_HOOK: str | None = None
    QUOTA_HOOK: str | None = None
    RUN_COMPLETED_HOOK: str | None = None
    # a run_finished notice not confirmed delivered this long after its claim is delivered again
    RUN_COMPLETED_LEASE_SECONDS: float = 300.0
    # LLM
    MODEL_PROVIDER: str = "openai"
    DEFAULT_MODEL: str = "gpt-4o"
    OPENAI_API_KEY: str | None = None
    OPENAI_BASE_URL: str | None = None
    ANTHROPIC_API_KEY: str | None = None
    # Langfuse (TRACER = "langfuse"; LANGFUSE_ENABLED = True, the seed's switch, selects it too)
    LANGFUSE_ENABLED: bool = False
    LANGFUSE_PUBLIC_KEY: str | None = None
    LANGFUSE_SECRET_KEY: str | None = None
    LANGFUSE_HOST: str | None = None
    # observability
    LOG_FORMAT: str = "text"  # or "json": one object per line, with the run's fields
    TRACER: str = "noop"  # "otel" or "langfuse": spans per attempt, LLM call and tool (extras)
    TRACE_CONTENT: bool = False  # send messages, outputs and tool arguments to the tracer too

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = _SCALARS.get(str(f.type).removesuffix(" | None"))
            optional = str(f.type).endswith(" | None")
            if kind is not None and not (value is None and optional) and not _is_a(value, kind):
                # keyword arguments are not parsed: Settings(PARTITIONS=4.0) made keys "{1.0}"
                # no worker with PARTITIONS=4 reads, and a "4" a bare TypeError below
                raise ConfigurationError(
                    f"{f.name} = {value!r} is not a valid {kind.__name__}; pass a {kind.__name__} "
                    "(Settings.from_mapping / from_env parse text)"
                )
            if isinstance(value, float):
                # "inf" and "nan" parse as floats, and inf passes every "> 0" below; as ms they
                # crash each submit or lease (OverflowError) instead of saying what is wrong
                _check(math.isfinite(value), f"{f.name} must be a finite number of seconds, not {value}")
        _check(self.PARTITIONS >= 1, "PARTITIONS must be at least 1")
        _check(self.LEASE_TTL_SECONDS > 0, "LEASE_TTL_SECONDS must be positive")
        _check(self.RUN_TIMEOUT_SECONDS > 0, "RUN_TIMEOUT_SECONDS must be positive")
        _check(self.MAX_RETRIES >= 1, "MAX_RETRIES must be at least 1 (one attempt)")
        _check(self.TOOL_THREADS >= 1, "TOOL_THREADS must be at least 1")
        _check(self.MAX_EVENT_BYTES >= 1024, "MAX_EVENT_BYTES must be at least 1024")
        _check(self.PROJECTOR_BATCH >= 1, "PROJECTOR_BATCH must be at least 1")
        _check(self.RUN_COMPLETED_LEASE_SECONDS > 0, "RUN_COMPLETED_LEASE_SECONDS must be positive")
        _check(self.STEP_TIMEOUT_SECONDS > 0, "STEP_TIMEOUT_SECONDS must be positive")
        _check(self.SSE_KEEPALIVE_SECONDS > 0, "SSE_KEEPALIVE_SECONDS must be positive")
        for name in ("RETRY_BACKOFF_BASE", "RETRY_BACKOFF_MAX", "SHUTDOWN_GRACE_SECONDS", "SSE_RETRY_MS"):
            _check(getattr(self, name) >= 0, f"{name} must not be negative")
        # Redis refuses an expiry of 0 or less (SET ... EX 0): every submit with a key would fail
        _check(self.IDEMPOTENCY_TTL_SECONDS >= 1, "IDEMPOTENCY_TTL_SECONDS must be at least 1")
        for name in (
            "DEFAULT_PROCESSES",
            "DEFAULT_CONCURRENCY",
            "SSE_CLIENT_BUFFER",
            "MAX_REQUEST_BYTES",
            "ANONYMOUS_SESSION_TTL_SECONDS",
        ):
            _check(getattr(self, name) >= 1, f"{name} must be at least 1")
        _check(
            self.DEFAULT_CONVERSATION_POLICY in POLICIES,
            f"DEFAULT_CONVERSATION_POLICY must be one of {', '.join(POLICIES)}",
        )
        _check(self.TRACER in TRACERS, f"TRACER must be one of {', '.join(TRACERS)}")
        _check(self.LOG_FORMAT in ("text", "json"), "LOG_FORMAT must be 'text' or 'json'")
        _check(
            ":" not in self.KEY_PREFIX and "{" not in self.KEY_PREFIX,
            "KEY_PREFIX must not contain ':' or '{'",
        )
        for event_type, level in self.EVENT_VISIBILITY.items():
            _check(
                level in Visibility.__members__.values(),
                f"EVENT_VISIBILITY[{event_type!r}] = {level!r}; use one of internal, debug, user",
            )

    @property
    def keys(self) -> Keys:
        return Keys(self.KEY_PREFIX, self.PARTITIONS)

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.LEASE_TTL_SECONDS * 1000)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Parse a settings dict; strings are accepted for every type (they come from env)."""
        valid = cls.names()
        hints = typing.get_type_hints(cls)
        parsed: dict[str, Any] = {}
        for name, raw in values.items():
            if name in SEED_ONLY_KEYS:
                raise ConfigurationError(
                    f"AGENTSTREAM[{name!r}] is a django-agent-runtime setting: {SEED_ONLY_KEYS[name]}"
                )
            if name not in valid:
                raise ConfigurationError(
                    f"unknown setting AGENTSTREAM[{name!r}]; valid settings: {', '.join(valid)}"
                )
            parsed[name] = _coerce(name, hints[name], raw)
        return cls(**parsed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], prefix: str = "AGENTSTREAM_") -> Settings:
        """``AGENTSTREAM_<KEY>`` variables (``REDIS_URL`` also unprefixed, as users expect)."""
        values = {k[len(prefix) :]: v for k, v in environ.items() if k.startswith(prefix)}
        for name in ENV_ONLY_NAMES:
            values.pop(name, None)
        if "REDIS_URL" in environ and "REDIS_URL" not in values:
            values["REDIS_URL"] = environ["REDIS_URL"]
        return cls.from_mapping(values)

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def load_callable(path: str, setting: str) -> Callable[..., Any]:
    """The function a hook setting names (``pkg.mod.func`` or ``pkg.mod:func``), or a
    ConfigurationError that names the setting and says what is wrong."""
    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    try:
        hook = getattr(importlib.import_module(module_name), attr) if sep else None
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(
            f"{setting} = {path!r} cannot be imported ({exc}); use 'package.module.function'"
        ) from None
    if hook is None:
        raise ConfigurationError(f"{setting} = {path!r} cannot be imported; use 'package.module.function'")
    if not callable(hook):
        raise ConfigurationError(f"{setting} = {path!r} is not callable")
    return cast(Callable[..., Any], hook)


# the annotations (text, under `from __future__ import annotations`) whose values are checked
_SCALARS: Mapping[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


def _is_a(value: object, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


def _coerce(name: str, hint: Any, raw: Any) -> Any:
    """Turn ``raw`` into the declared type or raise a ConfigurationError that names both."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if raw is None or (isinstance(raw, str) and raw.lower() in ("", "none", "null")):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return raw.lower() in ("1", "true", "yes", "on")
            raise ValueError
        if hint is int:
            if isinstance(raw, bool | float):
                raise ValueError
            return int(raw)
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if hint is str:
            if not isinstance(raw, str):
                raise ValueError
            return raw
        if origin is tuple:
            items = json.loads(raw) if isinstance(raw, str) and raw.startswith("[") else raw
            if isinstance(items, str):
                items = [s.strip() for s in items.split(",") if s.strip()]
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ValueError
            return tuple(items)
        if origin is Mapping:
            items = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(items, Mapping):
                raise ValueError
            return dict(items)
    except (ValueError, TypeError, json.JSONDecodeError):
        pass
    raise ConfigurationError(
        f"AGENTSTREAM[{name!r}] = {raw!r} is not a valid {getattr(hint, '__name__', hint)}"
    )

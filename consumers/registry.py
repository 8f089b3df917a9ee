"""Which ``AgentRuntime`` serves which agent key.

``register_runtime`` takes an instance, a class (instantiated with no arguments) or a factory
(a callable returning a runtime), and works as a decorator. ``discover`` imports the
``RUNTIME_REGISTRY`` entries (``pkg.mod:attr`` or ``pkg.mod.attr``) and the entry points of the
group ``agentstream.runtimes``; an entry may be a runtime, a runtime class, or a function that
registers runtimes itself (the django-agent-runtime way) or returns them. Every failure is kept
with its traceback in ``errors`` (Django's system check reports them), never only logged.
"""

from __future__ import annotations

import functools
import importlib
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

from agentstream.consumers.errors import RegistryError
from agentstream.consumers.runtime import AgentRuntime

ENTRY_POINT_GROUP = "agentstream.runtimes"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RegistrationError:
    source: str  # the RUNTIME_REGISTRY entry or entry point that failed
    message: str
    traceback: str


class RuntimeRegistry:
    def __init__(self) -> None:
        self._runtimes: dict[str, AgentRuntime] = {}
        self.errors: list[RegistrationError] = []
        self._loaded: set[str] = set()

    def register(self, runtime: Any) -> Any:
        """Register an instance, class or factory; returns its argument (usable as a decorator)."""
        instance = _instantiate(runtime)
        if not instance.key:
            raise RegistryError(f'{type(instance).__name__} has no key; set `key = "my-agent"` on the class')
        self._runtimes[instance.key] = instance
        return runtime

    def get(self, key: str) -> AgentRuntime:
        try:
            return self._runtimes[key]
        except KeyError:
            known = ", ".join(sorted(self._runtimes)) or "none"
            raise RegistryError(
                f"no runtime is registered for agent key {key!r} (registered: {known}); "
                "add it to AGENTSTREAM['RUNTIME_REGISTRY']"
            ) from None

    def keys(self) -> list[str]:
        return sorted(self._runtimes)

    def __contains__(self, key: object) -> bool:
        return key in self._runtimes

    def discover(
        self, paths: Iterable[str] = (), *, entry_point_group: str | None = ENTRY_POINT_GROUP
    ) -> None:
        """Load every path (once each) and entry point; failures land in ``errors``."""
        sources: list[tuple[str, Callable[[], Any]]] = [(p, functools.partial(import_path, p)) for p in paths]
        if entry_point_group:
            for ep in entry_points(group=entry_point_group):
                sources.append((f"entry point {ep.name} = {ep.value}", ep.load))
        for source, load in sources:
            if source in self._loaded:
                continue
            self._loaded.add(source)
            try:
                self._register_found(load())
            except Exception as exc:
                self.errors.append(
                    RegistrationError(source, f"{type(exc).__name__}: {exc}", traceback.format_exc())
                )

    def _register_found(self, found: Any) -> None:
        if isinstance(found, AgentRuntime) or (isinstance(found, type) and issubclass(found, AgentRuntime)):
            self.register(found)
            return
        if not callable(found):
            raise RegistryError(f"{found!r} is neither a runtime nor a function that registers runtimes")
        result = found()
        items = result if isinstance(result, list | tuple) else [result] if result is not None else []
        for item in items:
            self.register(item)


def _instantiate(runtime: Any) -> AgentRuntime:
    if isinstance(runtime, AgentRuntime):
        return runtime
    if isinstance(runtime, type) and issubclass(runtime, AgentRuntime):
        return runtime()
    if callable(runtime):
        made = runtime()
        if isinstance(made, AgentRuntime):
            return made
        raise RegistryError(f"factory {runtime!r} returned {type(made).__name__}, not an AgentRuntime")
    raise RegistryError(f"cannot register {runtime!r}: pass an AgentRuntime instance, subclass or factory")


def import_path(path: str) -> Any:
    """``pkg.mod:attr`` or ``pkg.mod.attr`` -> the object."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise RegistryError(f"{path!r} is not an import path; write 'package.module:name'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


default_registry = RuntimeRegistry()


def register_runtime(runtime: T) -> T:
    """Register with the process's default registry (what ``runagent`` serves)."""
    result: T = default_registry.register(runtime)
    return result


def get_runtime(key: str) -> AgentRuntime:
    return default_registry.get(key)

"""Which agent keys a run may name: the runtimes registered in this process, plus those that
workers announced in Redis (``P:{p}:agents``, set when a worker creates its queues), so an API
process that does not import the agents' code still accepts their keys."""

from __future__ import annotations

import threading
import time

from agentstream.django_app.api.backend import StoreThread

CACHE_S = 5.0

_lock = threading.Lock()
_cache: tuple[float, StoreThread | None, frozenset[str]] = (0.0, None, frozenset())


def registered_keys() -> set[str]:
    from agentstream.consumers.registry import default_registry
    from agentstream.django_app.conf import runtime_settings

    default_registry.discover(runtime_settings().RUNTIME_REGISTRY)
    return set(default_registry.keys())


def known_agent_keys(backend: StoreThread) -> frozenset[str]:
    global _cache
    at, owner, keys = _cache
    if owner is backend and time.monotonic() - at < CACHE_S:
        return keys
    store = backend.store

    async def announced() -> set[str]:
        async with store.redis.pipeline(transaction=False) as pipe:
            for partition in range(store.settings.PARTITIONS):
                pipe.smembers(store.keys.agents(partition))
            found: set[str] = set()
            for members in await pipe.execute():
                found |= {m.decode() if isinstance(m, bytes) else str(m) for m in members}
            return found

    fresh = frozenset(registered_keys() | backend.call(announced))
    with _lock:
        _cache = (time.monotonic(), backend, fresh)
    return fresh


def forget() -> None:
    """Drop the cache (tests that register agents at run time)."""
    global _cache
    _cache = (0.0, None, frozenset())

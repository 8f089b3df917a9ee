"""The API's one Redis client per process, for sync code (DRF views, the WSGI SSE body).

An asyncio Redis client belongs to the loop that made it, and a sync view has no loop of its
own, so the process keeps ONE loop in a daemon thread that owns the client, the ``EventStore``
and a ``Hub`` for WSGI streams; sync code hands it coroutines. No connection per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agentstream.core.eviction import ensure_noeviction
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore
from agentstream.django_app.conf import runtime_settings
from agentstream.django_app.sse.hub import Hub

T = TypeVar("T")

CALL_TIMEOUT_S = 30.0


class StoreThread:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="agentstream-api", daemon=True)
        self._thread.start()
        try:
            self.hub: Hub = self.call(self._start)
        except BaseException:  # an evicting or unreachable Redis: no thread left behind
            self._stop_loop()
            raise
        self.store: EventStore = self.hub.store

    async def _start(self) -> Hub:
        hub = Hub(self.settings)
        try:
            await ensure_noeviction(hub.store.redis, self.settings)
        except BaseException:
            await hub.close()
            raise
        return hub

    def call(self, make: Callable[[], Awaitable[T]], timeout_s: float = CALL_TIMEOUT_S) -> T:
        """Run ``make()`` on the store's loop and wait for its result (its exception re-raised)."""

        async def run() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"Redis did not answer within {timeout_s:g}s") from None

    def close(self) -> None:
        try:
            self.call(self.hub.close, timeout_s=5)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


_lock = threading.Lock()
_current: StoreThread | None = None


def api_backend() -> StoreThread:
    """The process's store thread for the current ``AGENTSTREAM`` settings (made on first use)."""
    global _current
    settings = runtime_settings()
    current = _current
    if current is not None and current.settings is settings:
        return current
    with _lock:
        if _current is None or _current.settings is not settings:
            old, _current = _current, StoreThread(settings)
            if old is not None:
                old.close()
        return _current


def shutdown() -> None:
    """Close the process's store thread (tests; a server's shutdown)."""
    global _current
    with _lock:
        current, _current = _current, None
    if current is not None:
        current.close()

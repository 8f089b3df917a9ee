"""Per-client bounded buffers the hub delivers to: one for async clients, one for threads (WSGI).

A buffer never blocks the hub: when a client falls ``limit`` frames behind it overflows, the hub
drops it, and its stream ends; the browser reconnects with Last-Event-ID and resumes exactly.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence

from agentstream.django_app.sse.framing import Frame


class AsyncBuffer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._frames: deque[Frame] = deque()
        self._ready = asyncio.Event()
        self.closed = False

    def deliver(self, frames: Sequence[Frame]) -> bool:
        if self.closed:
            return False
        if len(self._frames) + len(frames) > self.limit:
            self.close()
            return False
        self._frames.extend(frames)
        self._ready.set()
        return True

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def take(self, timeout_s: float) -> list[Frame] | None:
        """Everything buffered; ``None`` after ``timeout_s`` with nothing (time for a keepalive)."""
        if not self._frames and not self.closed:
            try:
                async with asyncio.timeout(timeout_s):  # no task per wait, unlike wait_for
                    await self._ready.wait()
            except TimeoutError:
                return None
        self._ready.clear()
        frames = list(self._frames)
        self._frames.clear()
        return frames


class ThreadBuffer:
    """Delivered to on the hub's loop thread, read by a WSGI worker thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._frames: deque[Frame] = deque()
        self._ready = threading.Condition()
        self.closed = False

    def deliver(self, frames: Sequence[Frame]) -> bool:
        with self._ready:
            if self.closed:
                return False
            if len(self._frames) + len(frames) > self.limit:
                self.closed = True
                self._ready.notify_all()
                return False
            self._frames.extend(frames)
            self._ready.notify_all()
            return True

    def close(self) -> None:
        with self._ready:
            self.closed = True
            self._ready.notify_all()

    def take(self, timeout_s: float) -> list[Frame] | None:
        with self._ready:
            if not self._frames and not self.closed:
                self._ready.wait(timeout_s)
            if not self._frames and not self.closed:
                return None
            frames = list(self._frames)
            self._frames.clear()
            return frames

"""Many short-lived timers on one event-loop timer: cheap to set, cheap to cancel.

Every run sets two timers that almost never fire: its timeout, and the flush of the events its
agent emitted (the attempt ends and writes them first). ``loop.call_later`` + ``cancel`` cost
~2 us each on uvloop (a libuv timer is allocated, started, stopped and closed); here a timer is
one heap entry, and cancelling it only marks it. One loop timer is armed for the earliest entry.

``Timers.call_later(delay_s, callback)`` has ``loop.call_later``'s shape (``Scheduler``), so
code that takes a ``Scheduler`` runs on either. Callbacks run in the context (contextvars) they
were set in, like the loop's; an exception is reported to the loop's exception handler.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """``loop.call_later``'s shape: an event loop is one, ``Timers`` is a cheaper one."""

    def call_later(self, delay: float, callback: Callable[[], object], /) -> Cancellable: ...


class Timer:
    __slots__ = ("_owner", "callback", "context")

    def __init__(self, owner: Timers, callback: Callable[[], object], context: contextvars.Context) -> None:
        self._owner = owner
        self.callback: Callable[[], object] | None = callback
        self.context = context

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self._owner._cancelled += 1


class Timers:
    """The timers of one event loop (bound on first use), on one loop timer."""

    COMPACT_AT = 1024  # rebuild the heap when it holds this many entries, most of them cancelled

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()  # equal deadlines fire in the order they were set
        self._loop: asyncio.AbstractEventLoop | None = None
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._cancelled = 0  # cancelled entries still in the heap

    @property
    def pending(self) -> int:
        """Timers set and neither fired nor cancelled."""
        return len(self._heap) - self._cancelled

    def call_later(self, delay: float, callback: Callable[[], object], /) -> Timer:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = Timer(self, callback, contextvars.copy_context())
        heap = self._heap
        heapq.heappush(heap, (when, next(self._order), timer))
        if when < self._armed_at:
            self._arm(when)
        elif self._cancelled > self.COMPACT_AT and self._cancelled * 2 > len(heap):
            self._compact()
        return timer

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._armed is not None:
            self._armed.cancel()
        self._armed_at = when
        self._armed = self._loop.call_at(when, self._fire, context=contextvars.Context())

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if entry[2].callback is not None]
        heapq.heapify(self._heap)
        self._cancelled = 0

    def _fire(self) -> None:
        assert self._loop is not None
        self._armed = None
        self._armed_at = float("inf")
        heap = self._heap
        now = self._loop.time()
        due: list[Timer] = []
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if timer.callback is None:
                self._cancelled -= 1
            else:
                due.append(timer)
        while heap and heap[0][2].callback is None:  # cancelled heads need no loop timer
            heapq.heappop(heap)
            self._cancelled -= 1
        if heap:
            self._arm(heap[0][0])
        for timer in due:
            callback = timer.callback
            if callback is None:  # cancelled by a callback that ran before it (off the heap)
                self._cancelled -= 1
                continue
            timer.callback = None
            try:
                timer.context.run(callback)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.call_exception_handler(
                    {"message": f"Exception in timer callback {callback!r}", "exception": exc}
                )

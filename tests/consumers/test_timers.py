"""consumers.timers: many timers on one loop timer, in deadline order, cancellable."""

from __future__ import annotations

import asyncio
import contextvars

from agentstream.consumers.timers import Timers


async def test_timers_fire_in_deadline_order_and_cancelled_ones_never_fire() -> None:
    timers = Timers()
    fired: list[str] = []
    done = asyncio.Event()
    timers.call_later(0.03, lambda: fired.append("c"))
    timers.call_later(0.01, lambda: fired.append("a"))
    cancelled = timers.call_later(0.02, lambda: fired.append("never"))
    timers.call_later(0.02, lambda: fired.append("b"))
    timers.call_later(0.04, done.set)
    cancelled.cancel()
    cancelled.cancel()  # twice is harmless
    await asyncio.wait_for(done.wait(), 2.0)
    assert fired == ["a", "b", "c"]
    assert timers.pending == 0


async def test_a_timer_can_cancel_another_due_at_the_same_time_and_set_new_ones() -> None:
    timers = Timers()
    fired: list[str] = []
    done = asyncio.Event()
    second = None

    def first() -> None:
        fired.append("first")
        assert second is not None
        second.cancel()
        timers.call_later(0.01, done.set)

    timers.call_later(0.01, first)
    second = timers.call_later(0.01, lambda: fired.append("second"))
    await asyncio.wait_for(done.wait(), 2.0)
    assert fired == ["first"]
    assert timers.pending == 0


async def test_callbacks_run_in_the_context_they_were_set_in() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    timers = Timers()
    seen: list[str] = []
    done = asyncio.Event()

    async def set_in(value: str) -> None:
        var.set(value)
        timers.call_later(0.01, lambda: seen.append(var.get()))

    await asyncio.gather(set_in("one"), set_in("two"))
    timers.call_later(0.02, done.set)
    await asyncio.wait_for(done.wait(), 2.0)
    assert sorted(seen) == ["one", "two"]


async def test_cancelled_timers_do_not_pile_up() -> None:
    timers = Timers()
    for _ in range(10 * Timers.COMPACT_AT):
        timers.call_later(60, lambda: None).cancel()
    assert len(timers._heap) <= 2 * Timers.COMPACT_AT + 2
    assert timers.pending == 0


async def test_an_exception_in_a_callback_goes_to_the_loop_handler_and_the_others_still_fire() -> None:
    loop = asyncio.get_running_loop()
    reported: list[object] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context.get("exception")))
    try:
        timers = Timers()
        fired: list[str] = []
        done = asyncio.Event()

        def boom() -> None:
            raise RuntimeError("boom")

        timers.call_later(0.01, boom)
        timers.call_later(0.01, lambda: fired.append("after"))
        timers.call_later(0.02, done.set)
        await asyncio.wait_for(done.wait(), 2.0)
    finally:
        loop.set_exception_handler(None)
    assert fired == ["after"]
    assert [type(e) for e in reported] == [RuntimeError]

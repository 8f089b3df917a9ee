"""RunContext's flushes at the edges of an attempt: a flush cancelled again while its batch is on
the wire still lands and is counted once; a flush the store refuses for good (the run ended
elsewhere) stops the attempt and is never sent again; an attempt that is over leaves no flush
timer and no events behind."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from agentstream.consumers import AgentRuntime, RunContext, RunResult, RuntimeRegistry
from agentstream.consumers.outcome import Outcome
from agentstream.consumers.timers import Timers
from agentstream.core.state import RunStatus
from agentstream.core.store import Claim, EventStore, SubmitRequest
from tests.consumers.helpers import running_worker, types, wait_for_event, wait_terminal, wait_until
from tests.core.storetools import claim


async def begun(store: EventStore) -> Claim:
    submitted = await store.submit(SubmitRequest("a", "user:1"))
    return await claim(store, submitted.run_id)


async def loop_turns(n: int) -> None:
    """Let the loop run what is ready ``n`` times (the cancelled flush up to its next wait): a
    count of turns, not a time."""
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize("written_first", [False, True], ids=["slow request", "slow reply"])
async def test_a_flush_cancelled_again_while_its_batch_is_on_the_wire_lands_and_is_counted_once(
    wstore: EventStore, written_first: bool
) -> None:
    begun_ = await begun(wstore)
    ctx = RunContext(wstore, begun_, flush_interval_s=60)
    on_the_wire, gate = asyncio.Event(), asyncio.Event()
    original = wstore.append_many

    async def slow(run_id: str, attempt: int, events: Any, **kw: Any) -> Any:
        on_the_wire.set()
        if written_first:
            result = await original(run_id, attempt, events, **kw)
            await gate.wait()
            return result
        await gate.wait()
        return await original(run_id, attempt, events, **kw)

    wstore.append_many = slow  # type: ignore[method-assign]
    for i in range(3):
        await ctx.emit("tool.call", {"i": i})
    flushing = asyncio.create_task(ctx.flush())
    await on_the_wire.wait()
    flushing.cancel()  # the cancel request
    await loop_turns(3)
    flushing.cancel()  # the heartbeat's "cancel", the timeout again, the drain
    await loop_turns(3)
    assert not flushing.done()  # still waiting for its batch
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert ctx.next_index == 4  # the batch counted as written
    await ctx.emit("agent.cleanup", {"hook": "cancel"})
    last = await ctx.take_buffer()
    await wstore.finish(
        begun_.run_id, begun_.attempt, "run.cancelled", {}, events=last, first_index=ctx.next_index
    )
    events = await wstore.read_run(begun_.run_id)
    assert types(events) == [
        "run.queued",
        "run.started",
        *["tool.call"] * 3,
        "agent.cleanup",
        "run.cancelled",
    ]


async def test_an_agent_cancelled_twice_during_its_flush_ends_cancelled_with_its_events_once(
    wstore: EventStore,
) -> None:
    gate, in_flight = asyncio.Event(), asyncio.Event()
    original = wstore.append_many

    async def slow_reply(run_id: str, attempt: int, events: Any, **kw: Any) -> Any:
        async def send() -> Any:
            result = await original(run_id, attempt, events, **kw)
            in_flight.set()
            await gate.wait()  # written; its reply is slow
            return result

        # like a pipeline already on the wire: cancelling the caller does not recall it
        return await asyncio.shield(asyncio.ensure_future(send()))

    wstore.append_many = slow_reply  # type: ignore[method-assign]
    async with running_worker(wstore) as worker:
        run_id = (await wstore.submit(SubmitRequest("sleeper", "user:1"))).run_id
        await asyncio.wait_for(in_flight.wait(), 10)  # the sleeper's own flush of its delta
        await wstore.cancel(run_id)
        attempt = worker.attempts[run_id][1]
        await wait_until(lambda: attempt.cancel_reason is not None, 5, "the cancel reached the worker")
        await loop_turns(3)  # the agent's flush takes it, and waits for its batch's reply
        attempt.request_cancel("cancel requested")  # what the heartbeat's "cancel" answer does
        gate.set()
        state = await wait_terminal(wstore, run_id)
    events = await wstore.read_run(run_id)
    assert state.status is RunStatus.CANCELLED
    # the cancel hook's event comes after the delta, numbered after it: not taken for a repeat
    assert types(events)[2:] == ["assistant.delta", "run.cancel_requested", "agent.cleanup", "run.cancelled"]


class Chatty(AgentRuntime):
    key = "chatty"

    async def run(self, ctx: RunContext) -> RunResult:
        while True:
            await ctx.emit("assistant.delta", {"delta": "x"})
            await asyncio.sleep(0.01)


async def test_an_attempt_whose_run_ended_elsewhere_stops_at_its_next_flush_and_leaves_nothing_behind(
    wstore: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    registry = RuntimeRegistry()
    registry.register(Chatty)
    long_lease = wstore.settings.with_overrides(LEASE_TTL_SECONDS=60.0)  # no heartbeat says "gone"
    store = EventStore(wstore.redis, long_lease, pipeline_scripts=True)
    async with running_worker(store, registry=registry) as worker:
        run_id = (await store.submit(SubmitRequest("chatty", "user:1"))).run_id
        await wait_for_event(store, run_id, "assistant.delta")
        attempt = worker.attempts[run_id][1]
        failed = {"error": {"type": "Stopped", "message": "by an operator"}}  # say, dead-lettered
        await store.finish(run_id, attempt.claim.attempt, "run.failed", failed)
        await wait_until(lambda: run_id not in worker.attempts, 5, "the attempt stopped")
        assert worker.timers.pending == 0  # no flush left to retry
    assert worker.outcomes == {Outcome.GONE: 1}
    retried = [r for r in caplog.records if "could not append" in r.getMessage()]
    assert not retried and not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_attempt_that_is_over_leaves_no_flush_timer_and_no_events_behind(wstore: EventStore) -> None:
    timers = Timers()
    ctx = RunContext(wstore, await begun(wstore), flush_interval_s=60, timers=timers)
    await ctx.emit("tool.call", {"i": 0})
    assert timers.pending == 1
    ctx.detach()  # stopped: fenced out, gone, or handed back at shutdown
    assert timers.pending == 0
    assert await ctx.take_buffer() == []

"""A cancel that arrives while the agent is failing ends the run cancelled at once: neither
a retry that would only be cancelled a backoff later (on another attempt) nor a failure."""

from __future__ import annotations

import asyncio

import pytest

from agentstream.consumers import AgentRuntime, ErrorInfo, RunContext, RunResult, RuntimeRegistry, Worker
from agentstream.consumers.outcome import Outcome
from agentstream.core.events import EventType
from agentstream.core.state import RunStatus
from agentstream.core.store import CancelOutcome, EventStore, SubmitRequest
from tests.consumers.helpers import running_worker, types, wait_terminal, wait_until
from tests.core.storetools import claim

IN_ON_ERROR: dict[str, asyncio.Event] = {}
GO_ON: dict[str, asyncio.Event] = {}


class FailsSlowly(AgentRuntime):
    """Fails with a retriable error; ``on_error`` waits for the test (say, a call to Sentry)."""

    key = "fails-slowly"

    async def run(self, ctx: RunContext) -> RunResult:
        ctx.record_usage({"prompt_tokens": 5})
        raise ConnectionError("upstream 503")

    async def on_error(self, ctx: RunContext, exc: BaseException) -> ErrorInfo | None:
        IN_ON_ERROR.setdefault(ctx.run_id, asyncio.Event()).set()
        await GO_ON.setdefault(ctx.run_id, asyncio.Event()).wait()
        return None


def registry() -> RuntimeRegistry:
    reg = RuntimeRegistry()
    reg.register(FailsSlowly)
    return reg


async def submit(store: EventStore) -> str:
    request = SubmitRequest("fails-slowly", "user:1", max_attempts=3)
    return (await store.submit(request)).run_id


async def cancel_during_on_error(store: EventStore, run_id: str) -> None:
    await asyncio.wait_for(IN_ON_ERROR.setdefault(run_id, asyncio.Event()).wait(), 10)
    await store.cancel(run_id, reason="user pressed stop")


async def test_a_cancel_during_on_error_ends_the_run_cancelled_without_a_retry(wstore: EventStore) -> None:
    async with running_worker(wstore, registry=registry()) as worker:
        run_id = await submit(wstore)
        await cancel_during_on_error(wstore, run_id)
        attempt = worker.attempts[run_id][1]
        await wait_until(lambda: attempt.cancel_reason is not None, 5, "the cancel reached the worker")
        GO_ON.setdefault(run_id, asyncio.Event()).set()
        state = await wait_terminal(wstore, run_id)
    events = await wstore.read_run(run_id)
    assert state.status is RunStatus.CANCELLED and state.attempt == 1
    assert types(events) == ["run.queued", "run.started", "run.cancel_requested", "run.cancelled"]
    assert events[-1].payload["usage"] == {"prompt_tokens": 5}


async def test_a_cancel_the_worker_has_not_heard_of_yet_is_honoured_by_schedule_retry(
    wstore: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Worker, "_on_cancel", lambda self, run_id: None)  # the broadcast is missed
    long_lease = wstore.settings.with_overrides(LEASE_TTL_SECONDS=60.0)  # and no heartbeat asks
    store = EventStore(wstore.redis, long_lease, pipeline_scripts=True)
    async with running_worker(store, registry=registry()) as worker:
        run_id = await submit(store)
        await cancel_during_on_error(store, run_id)
        GO_ON.setdefault(run_id, asyncio.Event()).set()
        state = await wait_terminal(store, run_id)
        await wait_until(lambda: run_id not in worker.attempts, 5, "the attempt ended")
    events = await store.read_run(run_id)
    assert state.status is RunStatus.CANCELLED and state.attempt == 1
    assert types(events) == ["run.queued", "run.started", "run.cancel_requested", "run.cancelled"]
    assert events[-1].payload == {"reason": "cancel requested", "usage": {"prompt_tokens": 5}}
    assert worker.outcomes == {Outcome.CANCELLED: 1}


@pytest.mark.parametrize("pipelined", [False, True])
async def test_schedule_retry_ends_a_run_whose_cancel_was_requested_and_hands_its_conversation_on(
    wstore: EventStore, pipelined: bool
) -> None:
    store = EventStore(wstore.redis, wstore.settings, pipeline_scripts=pipelined)
    conv = await store.create_conversation("user:1")
    first, waiting = [
        (await store.submit(SubmitRequest("a", "user:1", conversation_id=conv))).run_id for _ in range(2)
    ]
    begun = await claim(store, first)
    await store.cancel(first)
    outcome = await store.schedule_retry(
        first, begun.attempt, 60.0, {"type": "Boom", "message": "x"}, cancelled={"reason": "stop"}
    )
    state = await store.run_state(first)
    events = await store.read_run(first)
    assert isinstance(outcome, CancelOutcome) and outcome.seq == events[-1].seq
    assert state is not None and state.status is RunStatus.CANCELLED
    assert types(events)[-2:] == [EventType.RUN_CANCEL_REQUESTED, EventType.RUN_CANCELLED]
    assert events[-1].payload == {"reason": "stop"}
    partition = store.keys.run_partition(first)
    assert await store.redis.zscore(store.keys.delayed(partition), first) is None  # no retry waits
    pending = await store.redis.xpending(store.keys.queue(partition, "a"), "workers")
    assert pending["pending"] == 0  # its job is acknowledged
    assert (await claim(store, waiting)).run_id == waiting  # the conversation's next run goes on

"""Making runs and events for the API tests: straight through the store, or with the real worker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from agentstream.core.events import EventType, NewEvent
from agentstream.core.store import Claim, EventStore, SubmitRequest
from agentstream.projections.projection import ReadModelProjection
from agentstream.projections.projector import Projector, ProjectorOptions
from tests.consumers import agents
from tests.consumers.helpers import make_worker
from tests.django_app.conftest import run, store_for
from tests.projections.conftest import claim

T = TypeVar("T")


async def announce(store: EventStore, *agent_keys: str) -> None:
    """What a starting worker does: create its queues (which makes its agent keys known)."""
    await store.ensure_groups(agent_keys or ("echo",))


def with_store(values: dict[str, Any], use: Callable[[EventStore], Awaitable[T]]) -> T:
    """``use(store)`` from a sync test, on a store of its own (closed after)."""

    async def go() -> T:
        store = store_for(values)
        try:
            return await use(store)
        finally:
            await store.redis.aclose()

    return run(go)


def announce_sync(values: dict[str, Any], *agent_keys: str) -> None:
    with_store(values, lambda store: announce(store, *agent_keys))


async def running(store: EventStore, owner: str, **request: Any) -> Claim:
    """A submitted run, claimed by a worker: ready for appends."""
    await announce(store)
    result = await store.submit(SubmitRequest(agent_key="echo", owner=owner, **request))
    return await claim(store, result.run_id)


def standard_events(n: int) -> list[NewEvent]:
    """A mix of visibilities: user (messages, deltas), debug (tool calls/results), internal."""
    kinds = [
        (EventType.ASSISTANT_DELTA, {"delta": "x"}),
        (EventType.TOOL_CALL, {"id": "t", "name": "clock", "arguments": {}}),
        (EventType.TOOL_RESULT, {"id": "t", "name": "clock", "result": 1}),
        (EventType.STATE_CHECKPOINT, {"state": {"i": 1}}),
        (EventType.ASSISTANT_MESSAGE, {"role": "assistant", "content": "hi"}),
    ]
    return [NewEvent(kinds[i % len(kinds)][0], {**kinds[i % len(kinds)][1], "i": i}) for i in range(n)]


async def finish(store: EventStore, c: Claim, output: Any = None) -> int:
    return await store.finish(
        c.run_id,
        c.attempt,
        EventType.RUN_SUCCEEDED,
        {"output": output or {"ok": True}, "final_messages": [{"role": "assistant", "content": "done"}]},
    )


async def complete_run(store: EventStore, owner: str, events: Sequence[NewEvent] = (), **request: Any) -> str:
    c = await running(store, owner, **request)
    if events:
        await store.append_many(c.run_id, c.attempt, events)
    await finish(store, c)
    return c.run_id


def work(values: dict[str, Any]) -> None:
    """Run the real worker (test agents) until the queues are empty."""

    async def go() -> None:
        store = store_for(values)
        try:
            worker = make_worker(store, agents.registry(), burst=True, agent_keys=["echo", "sleeper"])
            await worker.run()
        finally:
            await store.redis.aclose()

    run(go)


def project(values: dict[str, Any], database: str = "default") -> None:
    """Run the projector until it has applied everything (the read-models catch up)."""

    async def go() -> None:
        store = store_for(values)
        projector = Projector(
            store.redis,
            store.keys,
            ReadModelProjection(),
            database=database,
            options=ProjectorOptions(block_ms=50),
        )
        try:
            await projector.run(burst=True)  # closes itself
        finally:
            await store.redis.aclose()

    run(go)

"""Shared helpers of the worker tests: a worker in the background, waiting for a run to end."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from agentstream.consumers import RuntimeRegistry, Worker
from agentstream.core.events import Event
from agentstream.core.state import RunState
from agentstream.core.store import EventStore
from tests.consumers import agents


def make_worker(store: EventStore, registry: RuntimeRegistry | None = None, **options: Any) -> Worker:
    options.setdefault("handle_signals", False)
    options.setdefault("block_ms", 200)
    options.setdefault("promote_interval_s", 0.05)
    return Worker(store, registry or agents.registry(), **options)


@asynccontextmanager
async def running_worker(store: EventStore, **options: Any) -> AsyncIterator[Worker]:
    worker = make_worker(store, **options)
    task = asyncio.create_task(worker.run())
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # the worker crashed at start: show why
    try:
        yield worker
    finally:
        worker.stop(grace=False)
        await asyncio.wait_for(task, 20)


async def burst(store: EventStore, timeout_s: float = 30, **options: Any) -> Worker:
    worker = make_worker(store, burst=True, **options)
    await asyncio.wait_for(worker.run(), timeout_s)
    return worker


async def wait_terminal(store: EventStore, run_id: str, timeout_s: float = 15) -> RunState:
    """Poll the run's state until it ended (a deadline as the backstop, never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = await store.run_state(run_id)
        if state is not None and state.status.is_terminal:
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not end within {timeout_s}s: {await store.run_state(run_id)}")


async def wait_for_event(store: EventStore, run_id: str, event_type: str, timeout_s: float = 15) -> Event:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in await store.read_run(run_id):
            if event.type == event_type:
                return event
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} has no {event_type} after {timeout_s}s")


async def _truth(value: Any) -> bool:
    return bool(await value) if inspect.isawaitable(value) else bool(value)


def types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


async def wait_until(predicate: Any, timeout_s: float = 10, what: str = "condition") -> None:
    """Poll ``predicate()`` (a function or a coroutine function) until true; a deadline is the backstop."""
    deadline = time.monotonic() + timeout_s
    while not await _truth(predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s")
        await asyncio.sleep(0.01)

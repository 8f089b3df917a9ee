"""An agent that ignores cancellation (catches CancelledError and goes on) does not keep its run
running: once the timeout's or the user's cancel has gone unheeded for ``abandon_after_s``, the
attempt writes the ending itself; the agent's later writes are refused. Fakeredis and real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from agentstream.consumers import AgentRuntime, RunContext, RunResult
from agentstream.consumers.registry import RuntimeRegistry
from agentstream.consumers.worker import Worker
from agentstream.core.state import RunStatus
from agentstream.core.store import EventStore, SubmitRequest
from tests.consumers.helpers import types, wait_terminal, wait_until


class Stubborn(AgentRuntime):
    """Swallows every cancel until ``release`` is set (as some SDK retry loops do)."""

    key = "stubborn"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancels = 0

    async def run(self, ctx: RunContext) -> RunResult:
        self.started.set()
        while not self.release.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                self.cancels += 1
        return RunResult(final_output={"late": True})


async def serve(store: EventStore, agent: Stubborn) -> tuple[Worker, asyncio.Task[None]]:
    registry = RuntimeRegistry()
    registry.register(agent)
    worker = Worker(store, registry, handle_signals=False, block_ms=100)
    worker.attempt_options = dataclasses.replace(worker.attempt_options, abandon_after_s=0.3)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), 10)
    return worker, task


async def stop(worker: Worker, task: asyncio.Task[None], agent: Stubborn) -> None:
    agent.release.set()
    worker.stop(grace=False)
    await asyncio.wait_for(task, 20)


async def test_a_run_whose_agent_ignores_its_timeout_ends_timed_out(wstore: EventStore, caplog: Any) -> None:
    agent = Stubborn()
    worker, task = await serve(wstore, agent)
    try:
        run_id = (await wstore.submit(SubmitRequest("stubborn", "user:1", timeout_s=0.2))).run_id
        state = await wait_terminal(wstore, run_id, timeout_s=10)
        assert state.status is RunStatus.TIMED_OUT
        assert agent.cancels >= 1 and not agent.release.is_set()  # the agent still loops
        assert "ignored its cancellation" in caplog.text
        agent.release.set()  # it returns at last: its success is refused, the run stays timed out
        await wait_until(lambda: run_id not in worker.attempts, 10, "the agent returned")
        assert types(await wstore.read_run(run_id))[-1] == "run.timed_out"
        assert (await wstore.run_state(run_id)).status is RunStatus.TIMED_OUT  # type: ignore[union-attr]
    finally:
        await stop(worker, task, agent)


async def test_a_run_whose_agent_ignores_a_users_cancel_ends_cancelled(wstore: EventStore) -> None:
    agent = Stubborn()
    worker, task = await serve(wstore, agent)
    try:
        run_id = (await wstore.submit(SubmitRequest("stubborn", "user:1"))).run_id
        await asyncio.wait_for(agent.started.wait(), 10)
        await wstore.cancel(run_id)
        state = await wait_terminal(wstore, run_id, timeout_s=10)
        assert state.status is RunStatus.CANCELLED and not agent.release.is_set()
        partition = wstore.keys.run_partition(run_id)
        assert await wstore.redis.xlen(wstore.keys.queue(partition, "stubborn")) == 0  # its job acked
    finally:
        await stop(worker, task, agent)

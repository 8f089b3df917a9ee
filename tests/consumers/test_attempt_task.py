"""The agent runs inside its attempt's own task: cancels of ours reach the agent only, never the
writes after it; a cancellation of the task itself goes on up."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from agentstream.consumers import AgentRuntime, RunContext, RunResult, execution
from agentstream.core.state import RunStatus
from agentstream.core.store import EventStore, SubmitRequest
from tests.consumers import agents
from tests.consumers.helpers import burst, running_worker, wait_until


class Stubborn(AgentRuntime):
    """Swallows the first cancellation and goes on sleeping."""

    key = "stubborn"
    cancels: int = 0

    async def run(self, ctx: RunContext) -> RunResult:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            Stubborn.cancels += 1
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            Stubborn.cancels += 1
            raise
        return RunResult()


class FlushThenReturn(AgentRuntime):
    """Flushes (the store answers 'cancel requested') and returns without awaiting again."""

    key = "flush-then-return"

    async def run(self, ctx: RunContext) -> RunResult:
        await ctx.emit_user_message("partial")
        await ctx.flush()
        return RunResult(final_output={"done": True})

    async def cancel(self, ctx: RunContext) -> None:
        await asyncio.sleep(0.01)  # a hook that waits: a cancel still pending would hit it
        agents.HOOKS_CALLED.append(("cancel", ctx.run_id))


def registry() -> Any:
    reg = agents.registry()
    reg.register(Stubborn)
    reg.register(FlushThenReturn)
    return reg


async def submit(store: EventStore, agent_key: str, **kw: Any) -> str:
    result = await store.submit(SubmitRequest(agent_key, "user:1", messages=[], **kw))
    return result.run_id


async def test_an_agent_that_ignores_its_timeout_is_cancelled_again_and_the_run_times_out(
    wstore: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execution, "HOOK_TIMEOUT_S", 0.2)
    Stubborn.cancels = 0
    run_id = await submit(wstore, "stubborn", timeout_s=0.2)
    started = time.monotonic()
    await burst(wstore, registry=registry())
    assert time.monotonic() - started < 5
    events = await wstore.read_run(run_id)
    assert events[-1].type == "run.timed_out"
    assert Stubborn.cancels == 2


async def test_a_cancel_answered_by_the_agents_own_flush_does_not_cancel_the_final_write(
    wstore: EventStore,
) -> None:
    original = wstore.append_many

    async def answer_cancel(run_id: str, attempt: int, events: Any, **kw: Any) -> Any:
        result = await original(run_id, attempt, events, **kw)
        return dataclasses.replace(result, cancel_requested=True)

    wstore.append_many = answer_cancel  # type: ignore[method-assign]
    run_id = await submit(wstore, "flush-then-return")
    await burst(wstore, registry=registry())
    events = await wstore.read_run(run_id)
    assert [e.type for e in events][-2:] == ["assistant.message", "run.cancelled"]
    assert events[-1].payload["final_messages"] == [{"role": "assistant", "content": "partial"}]
    assert ("cancel", run_id) in agents.HOOKS_CALLED


async def test_cancelling_the_attempts_task_itself_goes_on_up_and_writes_nothing(
    wstore: EventStore,
) -> None:
    async with running_worker(wstore, registry=registry()) as worker:
        run_id = await submit(wstore, "sleeper", params={"sleep_s": 60})
        await asyncio.wait_for(agents.started(run_id).wait(), 10)
        [task] = worker._jobs
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.cancelled()
        await wait_until(lambda: run_id not in worker.attempts, 5, "the attempt was let go")
        state = await wstore.run_state(run_id)
        assert state is not None and state.status is RunStatus.RUNNING
        events = await wstore.read_run(run_id)
        assert events[-1].type == "assistant.delta"

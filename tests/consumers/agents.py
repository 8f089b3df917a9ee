"""Agents the worker tests run, in-process and in real worker subprocesses.

Subprocess workers load them with ``AGENTSTREAM_RUNTIME_REGISTRY=tests.consumers.agents:register``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from agentstream.consumers import (
    AgentRuntime,
    ErrorInfo,
    PermanentFailure,
    Retry,
    RunContext,
    RunResult,
    RuntimeRegistry,
    get_llm_client,
)

# In-process tests look at these (subprocess tests read the run's events instead).
CANCELLED_AT: dict[str, float] = {}
STARTED: dict[str, asyncio.Event] = {}
HOOKS_CALLED: list[tuple[str, str]] = []


def started(run_id: str) -> asyncio.Event:
    return STARTED.setdefault(run_id, asyncio.Event())


class Echo(AgentRuntime):
    key = "echo"

    async def run(self, ctx: RunContext) -> RunResult:
        content = ctx.input_messages[-1]["content"] if ctx.input_messages else ""
        await ctx.emit_user_message(f"echo: {content}")
        ctx.record_usage({"prompt_tokens": 3, "completion_tokens": 2})
        return RunResult(final_output={"echo": content}, usage={"completion_tokens": 1})


class Other(Echo):
    key = "other"


class Sleeper(AgentRuntime):
    """Streams a delta, then sleeps ``params.sleep_s`` (cancellable), then answers."""

    key = "sleeper"

    async def run(self, ctx: RunContext) -> RunResult:
        await ctx.emit("assistant.delta", {"delta": "thinking"})
        await ctx.flush()
        started(ctx.run_id).set()
        try:
            sleep_s = float(ctx.params.get("sleep_s", 60))
            if ctx.attempt > 1:  # a reclaimed attempt may be quicker (SIGTERM hand-back tests)
                sleep_s = float(ctx.params.get("later_sleep_s", sleep_s))
            await asyncio.sleep(sleep_s)
        except asyncio.CancelledError:
            CANCELLED_AT[ctx.run_id] = time.monotonic()
            raise
        await ctx.emit_user_message("woke up")
        return RunResult(final_output={"slept": True})

    async def cancel(self, ctx: RunContext) -> None:
        HOOKS_CALLED.append(("cancel", ctx.run_id))
        await ctx.emit("agent.cleanup", {"hook": "cancel"})


class Flaky(AgentRuntime):
    """Fails with a plain exception until attempt ``params.succeed_on``."""

    key = "flaky"

    async def run(self, ctx: RunContext) -> RunResult:
        state = await ctx.get_state() or {"seen": []}
        await ctx.checkpoint({"seen": [*state["seen"], ctx.attempt]})
        if ctx.attempt < int(ctx.params.get("succeed_on", 99)):
            raise ConnectionResetError(f"upstream reset on attempt {ctx.attempt}")
        return RunResult(final_output={"attempts_seen": [*state["seen"], ctx.attempt]})


class RetryLater(AgentRuntime):
    key = "retry-later"

    async def run(self, ctx: RunContext) -> RunResult:
        if ctx.attempt == 1:
            raise Retry("rate limited", delay_s=float(ctx.params["delay_s"]))
        return RunResult(final_output={"attempt": ctx.attempt})


class Permanent(AgentRuntime):
    key = "permanent"

    async def run(self, ctx: RunContext) -> RunResult:
        raise PermanentFailure("the prompt is invalid")


class Unconfigured(AgentRuntime):
    """Asks for an LLM provider nobody configured."""

    key = "unconfigured"

    async def run(self, ctx: RunContext) -> RunResult:
        get_llm_client("no-such-provider")
        return RunResult()


class Classified(AgentRuntime):
    """A plain error its on_error hook marks as not retriable."""

    key = "classified"

    async def run(self, ctx: RunContext) -> RunResult:
        raise ValueError("bad tool arguments")

    async def on_error(self, ctx: RunContext, exc: BaseException) -> ErrorInfo | None:
        HOOKS_CALLED.append(("on_error", ctx.run_id))
        return ErrorInfo(type(exc).__name__, str(exc), retriable=False, details={"hint": "fix the tool"})


class Ticker(AgentRuntime):
    """Emits ``tick`` every ``params.every_s`` for ``params.ticks`` ticks (a long-running run)."""

    key = "ticker"

    async def run(self, ctx: RunContext) -> RunResult:
        ticks = int(ctx.params.get("ticks", 20))
        for i in range(ticks):
            await ctx.emit("tick", {"i": i, "pid": os.getpid()})
            await ctx.flush()
            await asyncio.sleep(float(ctx.params.get("every_s", 0.05)))
        return RunResult(final_output={"ticks": ticks, "pid": os.getpid()})


class Poison(AgentRuntime):
    """Kills the worker process that runs it, every time."""

    key = "poison"

    async def run(self, ctx: RunContext) -> RunResult:
        await ctx.emit("about.to.die", {"pid": os.getpid()})
        await ctx.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(60)
        return RunResult()


class Streamer(AgentRuntime):
    """Many deltas quickly: the buffer must coalesce them."""

    key = "streamer"

    async def run(self, ctx: RunContext) -> RunResult:
        for i in range(int(ctx.params.get("n", 500))):
            await ctx.emit("assistant.delta", {"delta": f"{i} "})
        await ctx.emit_user_message("done")
        return RunResult(final_output={"n": ctx.params.get("n", 500)})


class Silent(AgentRuntime):
    """Sleeps without emitting anything: no append can tell it about a cancel."""

    key = "silent"

    async def run(self, ctx: RunContext) -> RunResult:
        await asyncio.sleep(float(ctx.params.get("sleep_s", 60)))
        return RunResult()


class Noop(AgentRuntime):
    key = "noop"

    async def run(self, ctx: RunContext) -> RunResult:
        await ctx.emit_user_message("ok")
        return RunResult()


class Counted(AgentRuntime):
    """Counts how many of its runs execute at once (``COUNTED``: now, and the most seen)."""

    key = "counted"

    async def run(self, ctx: RunContext) -> RunResult:
        COUNTED["now"] += 1
        COUNTED["most"] = max(COUNTED["most"], COUNTED["now"])
        try:
            await asyncio.sleep(float(ctx.params.get("sleep_s", 0.005)))
        finally:
            COUNTED["now"] -= 1
        return RunResult()


COUNTED = {"now": 0, "most": 0}

ALL: list[type[AgentRuntime]] = [
    Echo,
    Other,
    Sleeper,
    Flaky,
    RetryLater,
    Permanent,
    Classified,
    Unconfigured,
    Ticker,
    Poison,
    Streamer,
    Silent,
    Noop,
    Counted,
]


def register() -> list[AgentRuntime]:
    """RUNTIME_REGISTRY entry: returns the runtimes to register."""
    return [cls() for cls in ALL]


def registry() -> RuntimeRegistry:
    reg = RuntimeRegistry()
    for cls in ALL:
        reg.register(cls)
    return reg


def payload_of(events: list[Any], event_type: str) -> dict[str, Any]:
    return dict(next(e for e in events if e.type == event_type).payload)

"""The demo's agents: ``chat-agent``, ``tool-agent`` and ``sleepy-agent``.

``register`` is the ``RUNTIME_REGISTRY`` entry of the bundled demo project.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agentstream.consumers import AgentRuntime, RunContext, RunResult


class SleepyAgent(AgentRuntime):
    """``params.steps`` (default 5) progress events ``params.delay_ms`` (default 200) apart.

    For trying cancellation, timeouts, kill -9 and load by hand.
    """

    key = "sleepy-agent"

    async def run(self, ctx: RunContext) -> RunResult:
        steps = _bounded_int(ctx.params.get("steps"), default=5, low=0, high=10_000)
        delay_ms = _bounded_int(ctx.params.get("delay_ms"), default=200, low=0, high=3_600_000)
        for step in range(1, steps + 1):
            await asyncio.sleep(delay_ms / 1000)
            await ctx.emit("progress", {"step": step, "of": steps})
        await ctx.emit_user_message(f"Slept {steps} x {delay_ms} ms.")
        return RunResult(final_output={"steps": steps, "delay_ms": delay_ms})


def _bounded_int(value: Any, *, default: int, low: int, high: int) -> int:
    try:
        number = int(value) if value is not None else default
    except (TypeError, ValueError):
        number = default
    return max(low, min(high, number))


def register() -> list[AgentRuntime]:
    """The demo's runtimes; the registry that discovers this entry registers them."""
    from agentstream.django_app.demo.chat import ChatAgent, ToolAgent

    return [ChatAgent(), ToolAgent(), SleepyAgent()]

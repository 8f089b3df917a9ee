"""``tool_agent``: the tool loop with a calculator and a clock.

On the ``fake`` provider (no API key) the model is scripted by ``demo_responder``: it calls the
calculator for text with arithmetic in it, the clock for questions about time, then answers
with the tool's result, so the demo shows the whole tool flow.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Any

from agentstream.consumers.context import RunContext
from agentstream.consumers.examples.calculator import calculate
from agentstream.consumers.llm import FakeLLMClient, FakeReply, FakeToolCall, LLMClient, get_llm_client
from agentstream.consumers.llm.types import ToolSpec
from agentstream.consumers.runtime import AgentRuntime, RunResult
from agentstream.consumers.tools import Tool, ToolRegistry, run_tool_loop

SYSTEM_PROMPT = "You are a helpful assistant. Use the calculator for arithmetic and the clock for the time."


def current_time(timezone: str = "UTC") -> str:
    """The current date and time.

    Args:
        timezone: An IANA time zone name, e.g. "Europe/Paris".
    """
    try:
        zone = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris'") from None
    return dt.datetime.now(zone).isoformat(timespec="seconds")


def default_tools() -> ToolRegistry:
    return ToolRegistry([Tool.from_function(calculate, name="calculator"), Tool.from_function(current_time)])


_ARITHMETIC = re.compile(r"[-+(]*\d[\d.\s]*(?:[-+*/%^()]+[\s(]*[\d.]+[\s)]*)+")


def demo_responder(messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec]) -> FakeReply:
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return FakeReply(f"The answer is {last.get('content')}.")
    text = str(last.get("content") or "")
    offered = {str((t.get("function") or {}).get("name")) for t in tools}
    match = _ARITHMETIC.search(text)
    if match and "calculator" in offered:
        return FakeReply(tool_calls=(FakeToolCall("calculator", {"expression": match.group(0).strip()}),))
    if "time" in text.lower() and "current_time" in offered:
        return FakeReply(tool_calls=(FakeToolCall("current_time", {"timezone": "UTC"}),))
    return FakeReply("Ask me to calculate something, or for the time.")


class ToolAgent(AgentRuntime):
    """Params: ``model``, ``max_steps`` (default 8)."""

    key = "tool_agent"

    def __init__(self, llm: LLMClient | None = None, tools: ToolRegistry | None = None) -> None:
        self.llm = llm
        self.tools = tools or default_tools()

    def _client(self) -> LLMClient:
        if self.llm is not None:
            return self.llm
        llm = get_llm_client()
        if isinstance(llm, FakeLLMClient):  # the keyless demo: script the model to use the tools
            return llm.with_responder(demo_responder)
        return llm

    async def run(self, ctx: RunContext) -> RunResult:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *ctx.input_messages]
        result = await run_tool_loop(
            ctx,
            self._client(),
            self.tools,
            messages,
            max_steps=int(ctx.params.get("max_steps", 8)),
            model=ctx.params.get("model"),
        )
        final_messages: list[Mapping[str, Any]] = [*result.messages[1:]]  # without the system prompt
        # Usage is already on ctx (stream_completion records it); RunResult.usage would count it twice.
        return RunResult(
            final_output={
                "response": result.content,
                "steps": result.steps,
                "stop_reason": result.stop_reason,
            },
            final_messages=final_messages,
        )

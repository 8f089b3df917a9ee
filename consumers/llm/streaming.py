"""Stream a completion into a run: ``assistant.delta`` per token, then one ``assistant.message``.

The engine coalesces emits into batched appends, so one delta per token costs no round trip.
Cancelling the run cancels the agent's task; ``aclosing`` then closes the provider stream (and
its HTTP connection) whether the cancellation lands inside the provider's read or inside our
``emit``, so a cancelled run stops spending tokens at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import aclosing
from typing import Any, Protocol

from agentstream.consumers.llm.types import LLMClient, LLMResponse, ResponseAssembler, ToolSpec
from agentstream.core.events import Visibility


class EmittingContext(Protocol):
    """The part of ``RunContext`` these helpers use (structural, so any context with it works)."""

    async def emit(
        self, event_type: str, payload: Mapping[str, Any], *, visibility: Visibility | None = None
    ) -> None: ...

    def record_usage(self, usage: Mapping[str, int | float]) -> None: ...


async def stream_completion(
    ctx: EmittingContext,
    llm: LLMClient,
    messages: Sequence[Mapping[str, Any]],
    *,
    model: str | None = None,
    tools: Sequence[ToolSpec] | None = None,
    emit_message: bool = True,
    **kwargs: Any,
) -> LLMResponse:
    """Stream into ``ctx`` and return the whole response; its usage is recorded on the run.

    ``assistant.message`` is emitted when the turn has text (a turn that only calls tools is told
    by the ``tool.call`` events of ``run_tool_loop``); ``emit_message=False`` leaves it to the caller.
    """
    assembler = ResponseAssembler(model or llm.default_model)
    async with aclosing(llm.stream(messages, model=model, tools=tools, **kwargs)) as chunks:
        async for chunk in chunks:
            assembler.add(chunk)
            if chunk.delta:
                await ctx.emit("assistant.delta", {"delta": chunk.delta})
    response = assembler.response()
    if assembler.usage is not None:
        ctx.record_usage(assembler.usage.as_dict())
    if emit_message and response.content:
        await ctx.emit("assistant.message", dict(response.message))
    return response

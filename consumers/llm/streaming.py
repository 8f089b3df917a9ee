"""Stream a completion into a run: ``assistant.delta`` per token, then one ``assistant.message``.

The engine coalesces emits into batched appends, so one delta per token costs no round trip.
Cancelling the run cancels the agent's task; ``aclosing`` then closes the provider stream (and
its HTTP connection) whether the cancellation lands inside the provider's read or inside our
``emit``, so a cancelled run stops spending tokens at once.

``CallDeadline`` is the providers' side: ``STEP_TIMEOUT_SECONDS`` bounds one whole LLM call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, Protocol, TypeVar

from agentstream.consumers.llm.errors import deadline_exceeded
from agentstream.consumers.llm.types import LLMClient, LLMResponse, ResponseAssembler, ToolSpec
from agentstream.core.events import Visibility

T = TypeVar("T")


class CallDeadline:
    """One LLM call's deadline: ``timeout_s`` (``STEP_TIMEOUT_SECONDS``) from its start to its last
    chunk, however steadily the chunks come (the SDKs' own timeout only bounds each read)::

        deadline = CallDeadline("openai", self.timeout_s)   # the clock starts here
        response = await deadline.bound(client.chat.completions.create(**args))
        try:
            async with aclosing(deadline.chunks(response)) as chunks:
                async for chunk in chunks:
                    yield ...
        finally:
            await response.close()   # the HTTP stream closes when the deadline hits, too

    Each wait on the provider gets the time left, and expiry cancels that wait and raises
    ``Retry`` (``errors.deadline_exceeded``, retriable: the runtime tries again). The time the
    caller spends between chunks counts but is not interrupted (a deadline held across a
    ``yield`` would cancel the caller's code instead): the next pull raises. ``timeout_s=None``
    bounds nothing.
    """

    __slots__ = ("_expires_at", "provider", "timeout_s")

    def __init__(self, provider: str, timeout_s: float | None) -> None:
        self.provider = provider
        self.timeout_s = timeout_s
        now = asyncio.get_running_loop().time()
        self._expires_at = None if timeout_s is None else now + timeout_s

    async def bound(self, awaitable: Awaitable[T]) -> T:
        """Await within the time left; ``Retry`` once it is up."""
        if self._expires_at is None or self.timeout_s is None:
            return await awaitable
        if asyncio.get_running_loop().time() >= self._expires_at:
            close = getattr(awaitable, "close", None)  # never awaited: say so without a warning
            if close is not None:
                close()
            raise deadline_exceeded(self.provider, self.timeout_s)
        timeout = asyncio.timeout_at(self._expires_at)
        try:
            async with timeout:
                return await awaitable
        except TimeoutError as exc:
            if not timeout.expired():
                raise  # the provider's own TimeoutError, not ours
            raise deadline_exceeded(self.provider, self.timeout_s) from exc

    async def chunks(self, stream: AsyncIterable[T]) -> AsyncGenerator[T, None]:
        """``stream``'s items, each awaited with ``bound``; close it with ``aclosing``."""
        iterator = aiter(stream)
        while True:
            try:
                item = await self.bound(anext(iterator))
            except StopAsyncIteration:
                return
            yield item


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

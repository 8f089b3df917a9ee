"""Run a compiled LangGraph graph as an agent (extra ``agentstream[langgraph]``).

The graph's state holds ``messages`` (e.g. ``MessagesState``). Input messages are converted to
LangChain messages; the graph is streamed with ``stream_mode=["messages", "updates", "values"]``:
LLM tokens become ``assistant.delta``, new AI messages ``assistant.message`` (and ``tool.call``
for their tool calls), tool messages ``tool.result``; token usage of AI messages is recorded on
the run. The final state's messages, back in OpenAI format, are the run's ``final_messages``.
Cancelling the run cancels the graph's task, and with it any model call in flight.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agentstream.consumers.context import RunContext
from agentstream.consumers.runtime import AgentRuntime, RunResult
from agentstream.core.errors import ConfigurationError


def _langchain() -> Any:
    try:
        from langchain_core import messages
    except ImportError as exc:
        raise ConfigurationError(
            "the LangGraph adapter needs langgraph: pip install 'agentstream[langgraph]'"
        ) from exc
    return messages


class LangGraphAgent(AgentRuntime):
    def __init__(self, graph: Any, *, key: str, config: Mapping[str, Any] | None = None) -> None:
        self.graph = graph
        self.key = key
        self.config = dict(config or {})

    async def run(self, ctx: RunContext) -> RunResult:
        lc = _langchain()
        config = {**self.config, "configurable": {"thread_id": ctx.conversation_id or ctx.run_id}}
        config["configurable"].update(self.config.get("configurable", {}))
        state_in = {"messages": lc.convert_to_messages(ctx.input_messages)}
        final_state: Mapping[str, Any] = {}
        async for mode, chunk in self.graph.astream(
            state_in, config, stream_mode=["messages", "updates", "values"]
        ):
            if mode == "messages":
                message, _metadata = chunk
                if (
                    isinstance(message, lc.AIMessageChunk)
                    and isinstance(message.content, str)
                    and message.content
                ):
                    await ctx.emit("assistant.delta", {"delta": message.content})
            elif mode == "updates":
                for update in (chunk or {}).values():
                    for message in _new_messages(update):
                        await _emit_message(ctx, lc, message)
            elif mode == "values":
                final_state = chunk
        messages = lc.convert_to_openai_messages(list(final_state.get("messages", [])))
        answer: Mapping[str, Any] = next((m for m in reversed(messages) if m.get("role") == "assistant"), {})
        return RunResult(
            final_output={"response": answer.get("content") or ""},
            final_messages=list(messages),
        )


def _new_messages(update: Any) -> list[Any]:
    if not isinstance(update, Mapping):
        return []
    found = update.get("messages") or []
    return list(found) if isinstance(found, list | tuple) else [found]


async def _emit_message(ctx: RunContext, lc: Any, message: Any) -> None:
    if isinstance(message, lc.AIMessage):
        usage = getattr(message, "usage_metadata", None) or {}
        if usage:
            prompt, completion = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
            ctx.record_usage(
                {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }
            )
        if isinstance(message.content, str) and message.content:
            await ctx.emit("assistant.message", {"role": "assistant", "content": message.content})
        for call in message.tool_calls:
            await ctx.emit(
                "tool.call", {"id": call.get("id"), "name": call["name"], "arguments": call["args"]}
            )
    elif isinstance(message, lc.ToolMessage):
        payload: dict[str, Any] = {"id": message.tool_call_id, "name": message.name}
        content = message.content if isinstance(message.content, str) else json.dumps(message.content)
        payload["error" if getattr(message, "status", "success") == "error" else "result"] = content
        await ctx.emit("tool.result", payload)

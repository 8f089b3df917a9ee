"""django-agent-runtime 0.3.6's documented agent code, through a real worker, with agentstream's imports.

The agents below are the seed's README "Building Agents with Tools" example and its shipped
``examples/tool_agent.py``, kept as they were but for the lines marked ``# changed:``.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from agentstream.consumers import (
    AgentRuntime,
    ErrorInfo,
    EventType,
    RunContext,
    RunResult,
    RuntimeRegistry,
    Tool,
    ToolDefinition,
    ToolRegistry,
)
from agentstream.consumers.llm import FakeLLMClient, FakeReply, FakeToolCall, get_llm_client
from agentstream.consumers.llm.types import ToolSpec
from agentstream.core.store import EventStore, SubmitRequest
from tests.consumers.helpers import burst, types

# -- the seed README's tool agent --------------------------------------------------------------


def get_weather(location: str) -> str:
    """Get current weather for a location."""
    # Your weather API call here
    return f"Sunny, 72°F in {location}"


def search_database(query: str) -> list:
    """Search the database for relevant information."""
    # Your database search here
    return [{"title": "Result 1", "content": "..."}]


class ToolAgent(AgentRuntime):
    @property
    def key(self) -> str:
        return "tool-agent"

    def __init__(self):
        self.tools = ToolRegistry()
        self.tools.register(Tool.from_function(get_weather))
        self.tools.register(Tool.from_function(search_database))

    async def run(self, ctx: RunContext) -> RunResult:
        llm = get_llm_client()
        messages = list(ctx.input_messages)

        while True:
            response = await llm.generate(
                messages,
                tools=self.tools.to_openai_format(),
            )
            messages.append(response.message)

            if not response.tool_calls:
                break

            for tool_call in response.tool_calls:
                # Emit tool call event
                await ctx.emit(
                    EventType.TOOL_CALL,
                    {
                        "tool": tool_call["function"]["name"],
                        "arguments": tool_call["function"]["arguments"],
                    },
                )

                # Execute tool
                result = await self.tools.execute(
                    tool_call["function"]["name"],
                    tool_call["function"]["arguments"],
                )

                # Emit result event
                await ctx.emit(
                    EventType.TOOL_RESULT,
                    {
                        "tool_call_id": tool_call["id"],
                        "result": result,
                    },
                )

                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": tool_call["id"],
                        "content": str(result),
                    }
                )

        return RunResult(
            final_output={"response": response.message["content"]},
            final_messages=messages,
        )


# -- the seed's examples/tool_agent.py ---------------------------------------------------------


class ToolAgentRuntime(AgentRuntime):
    MAX_ITERATIONS = 10

    @property
    def key(self) -> str:
        return "tool-agent-example"

    async def run(self, ctx: RunContext) -> RunResult:
        llm = get_llm_client()
        messages = list(ctx.input_messages)
        total_usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

        self._register_tools(ctx.tool_registry)

        for iteration in range(self.MAX_ITERATIONS):
            if ctx.cancelled():
                break

            await ctx.checkpoint({"iteration": iteration, "messages": messages})

            response = await llm.generate(
                messages=messages,
                tools=ctx.tool_registry.to_openai_format(),
                **ctx.params,
            )

            for key in total_usage:
                total_usage[key] += response.usage.as_dict().get(key, 0)  # changed: a Usage, not a dict

            assistant_message = response.message
            messages.append(assistant_message)

            tool_calls = assistant_message.get("tool_calls", [])

            if not tool_calls:
                await ctx.emit(
                    EventType.ASSISTANT_MESSAGE,
                    {"content": assistant_message.get("content", ""), "role": "assistant"},
                )
                break

            for tool_call in tool_calls:
                func = tool_call.get("function", {})
                tool_name = func.get("name", "")
                tool_args = json.loads(func.get("arguments", "{}"))

                await ctx.emit(
                    EventType.TOOL_CALL,
                    {"id": tool_call.get("id"), "name": tool_name, "arguments": tool_args},
                )

                try:
                    result = await ctx.tool_registry.execute(tool_name, tool_args)
                    result_str = json.dumps(result) if not isinstance(result, str) else result
                except Exception as e:
                    result_str = f"Error: {e}"

                await ctx.emit(
                    EventType.TOOL_RESULT,
                    {"id": tool_call.get("id"), "name": tool_name, "result": result_str},
                )

                messages.append({"role": "tool", "tool_call_id": tool_call.get("id"), "content": result_str})

        return RunResult(
            final_output={"response": messages[-1].get("content", "")},
            final_messages=messages,
            usage=total_usage,
        )

    def _register_tools(self, registry: ToolRegistry) -> None:
        async def calculate(expression: str) -> str:
            """Evaluate a math expression."""
            # changed: the seed used eval(); a sum keeps the test honest without it
            return str(sum(int(term) for term in expression.split("+")))

        registry.register(
            ToolDefinition(
                name="calculate",
                description="Evaluate a mathematical expression",
                parameters={
                    "type": "object",
                    "properties": {
                        "expression": {"type": "string", "description": "The math expression to evaluate"},
                    },
                    "required": ["expression"],
                },
                handler=calculate,
            )
        )


# -- the scripted model and the worker ---------------------------------------------------------


def scripted_model(tool: str, arguments: Mapping[str, Any]) -> FakeLLMClient:
    """Calls ``tool`` once, then answers with what the tool returned."""

    def respond(messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec]) -> FakeReply:
        last = messages[-1]
        if last.get("role") == "tool":
            return FakeReply(f"Done: {last['content']}")
        return FakeReply(tool_calls=(FakeToolCall(tool, arguments),))

    return FakeLLMClient(responder=respond)


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Points the agents' ``get_llm_client()`` at a scripted fake model (returns the setter)."""

    def use(llm: FakeLLMClient) -> None:
        monkeypatch.setattr(sys.modules[__name__], "get_llm_client", lambda: llm)

    return use


async def run_agent(store: EventStore, agent: AgentRuntime, content: str) -> list[Any]:
    registry = RuntimeRegistry()
    registry.register(agent)
    submitted = await store.submit(
        SubmitRequest(agent_key=agent.key, owner="user:1", messages=[{"role": "user", "content": content}])
    )
    await burst(store, registry=registry)
    return await store.read_run(submitted.run_id)


async def test_the_seed_readme_tool_agent_runs_through_a_worker(wstore: EventStore, model: Any) -> None:
    model(scripted_model("get_weather", {"location": "Paris"}))
    events = await run_agent(wstore, ToolAgent(), "Weather in Paris?")

    assert types(events) == ["run.queued", "run.started", "tool.call", "tool.result", "run.succeeded"]
    by_type = {e.type: e.payload for e in events}
    assert by_type["tool.call"] == {"tool": "get_weather", "arguments": '{"location": "Paris"}'}
    assert by_type["tool.result"] == {"tool_call_id": "call_1", "result": "Sunny, 72°F in Paris"}
    succeeded = by_type["run.succeeded"]
    assert succeeded["output"] == {"response": "Done: Sunny, 72°F in Paris"}
    assert [m["role"] for m in succeeded["final_messages"]] == ["user", "assistant", "tool", "assistant"]
    assert succeeded["final_messages"][2]["content"] == "Sunny, 72°F in Paris"  # str(result): the value


async def test_the_seed_example_registers_a_tool_definition_on_ctx_tool_registry(
    wstore: EventStore, model: Any
) -> None:
    model(scripted_model("calculate", {"expression": "40+2"}))
    agent = ToolAgentRuntime()
    events = await run_agent(wstore, agent, "What is 40+2?")
    # a second run registers the tool again: each attempt has a registry of its own, as in the seed
    again = await run_agent(wstore, agent, "And again?")
    assert again[-1].type == "run.succeeded"

    kinds = types(events)
    assert kinds.count("state.checkpoint") == 2
    assert [k for k in kinds if k != "state.checkpoint"] == [
        "run.queued",
        "run.started",
        "tool.call",
        "tool.result",
        "assistant.message",
        "run.succeeded",
    ]
    by_type = {e.type: e.payload for e in events}
    assert by_type["tool.call"] == {"id": "call_1", "name": "calculate", "arguments": {"expression": "40+2"}}
    assert by_type["tool.result"] == {"id": "call_1", "name": "calculate", "result": "42"}
    succeeded = by_type["run.succeeded"]
    assert succeeded["output"] == {"response": "Done: 42"}
    assert succeeded["usage"]["total_tokens"] > 0


class SeedClassified(AgentRuntime):
    """A seed-style ``on_error``: ``ErrorInfo`` built positionally, in the seed's field order."""

    key = "seed-classified"

    async def run(self, ctx: RunContext) -> RunResult:
        raise ValueError("the invoice is malformed")

    async def on_error(self, ctx: RunContext, exc: BaseException) -> ErrorInfo | None:
        return ErrorInfo(type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)), False)


def test_error_info_takes_the_seeds_positional_order() -> None:
    info = ErrorInfo("ValueError", "bad", "Traceback ...", False)
    assert (info.stack, info.retriable) == ("Traceback ...", False)


async def test_a_positional_do_not_retry_error_info_fails_the_run_at_once(wstore: EventStore) -> None:
    events = await run_agent(wstore, SeedClassified(), "go")
    assert types(events) == ["run.queued", "run.started", "run.failed"]  # no retry
    error = events[-1].payload["error"]
    assert (error["type"], error["message"], error["retriable"]) == (
        "ValueError",
        "the invoice is malformed",
        False,
    )
    assert "raise ValueError" in error["stack"]


class ReportsErrors(AgentRuntime):
    key = "reports-errors"

    async def run(self, ctx: RunContext) -> RunResult:
        await ctx.emit_error("Rate limited", {"code": 429})  # the seed's positional details
        await ctx.emit_error("Rate limited", details={"code": 429})
        await ctx.emit_error("Rate limited", code=429)
        return RunResult()


async def test_emit_error_takes_the_seeds_positional_details(wstore: EventStore) -> None:
    events = await run_agent(wstore, ReportsErrors(), "go")
    errors = [e.payload for e in events if e.type == EventType.ERROR]
    assert errors == [{"message": "Rate limited", "details": {"code": 429}}] * 2 + [
        {"message": "Rate limited", "code": 429}
    ]


def test_an_error_info_with_retriable_third_as_before_still_means_it_and_warns() -> None:
    with pytest.warns(DeprecationWarning, match="pass retriable= by keyword"):
        info = ErrorInfo("ValueError", "bad", False)  # type: ignore[arg-type]
    assert (info.stack, info.retriable) == (None, False)

"""The example agents, on the fake model (and LangGraph when it is installed)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any, cast

import pytest

from agentstream.consumers.context import RunContext
from agentstream.consumers.examples.calculator import CalculatorError, calculate
from agentstream.consumers.examples.simple_chat import SimpleChatAgent
from agentstream.consumers.examples.tool_agent import ToolAgent, current_time, default_tools
from agentstream.consumers.llm import FakeLLMClient, FakeReply, FakeToolCall, configure
from agentstream.core.settings import Settings
from tests.consumers.llm_fakes import RecordingContext


def as_ctx(ctx: RecordingContext) -> RunContext:
    return cast(RunContext, ctx)  # the recording stand-in has the part of RunContext agents use


@pytest.fixture
def fake_provider() -> Iterator[None]:
    configure(Settings(MODEL_PROVIDER="fake", DEFAULT_MODEL="fake-1"))
    yield
    configure(None)


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("2 ^ 10", 1024),
        ("-7 // 2", -4),
        ("sqrt(16) + abs(-1)", 5.0),
        ("round(pi, 2)", 3.14),
        ("max(1, 5, 3) % 4", 1),
        ("1.5e3 / 3", 500.0),
    ],
)
def test_the_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("__import__('os').system('true')", "not allowed"),
        ("().__class__", "not allowed"),
        ("x + 1", "not allowed"),
        ("open('f')", "not allowed"),
        ("9 ** 9 ** 9", "larger than"),
        ("1 / 0", "division by zero"),
        ("2 +", "not an arithmetic expression"),
        ("'a' * 3", "not allowed"),
    ],
)
def test_the_calculator_refuses_anything_but_arithmetic_without_eval(expression: str, error: str) -> None:
    with pytest.raises(CalculatorError, match=error):
        calculate(expression)


def test_the_clock_answers_in_the_requested_zone_and_rejects_unknown_zones() -> None:
    stamp = dt.datetime.fromisoformat(current_time("Asia/Tokyo"))
    assert stamp.utcoffset() == dt.timedelta(hours=9)
    with pytest.raises(ValueError, match="IANA"):
        current_time("Mars/Olympus")


async def test_simple_chat_streams_one_reply_with_the_configured_default_model(fake_provider: None) -> None:
    ctx = RecordingContext([{"role": "user", "content": "hello agent"}])
    result = await SimpleChatAgent().run(as_ctx(ctx))
    assert result.final_output == {"response": "You said: hello agent", "model": "fake-1"}
    assert ctx.types() == ["assistant.delta"] * 4 + ["assistant.message"]
    assert result.final_messages[-1] == {"role": "assistant", "content": "You said: hello agent"}
    assert ctx.usage["total_tokens"] == ctx.usage["prompt_tokens"] + ctx.usage["completion_tokens"] > 0


async def test_simple_chat_passes_the_model_param_and_system_prompt() -> None:
    llm = FakeLLMClient(["ok"])
    ctx = RecordingContext(params={"model": "m2", "system_prompt": "Be a pirate."})
    await SimpleChatAgent(llm).run(as_ctx(ctx))
    messages, _tools, model = llm.requests[0]
    assert model == "m2"
    assert messages[0] == {"role": "system", "content": "Be a pirate."}


async def test_tool_agent_on_the_keyless_demo_model_calls_the_calculator(fake_provider: None) -> None:
    ctx = RecordingContext([{"role": "user", "content": "What is (12 + 30) * 2?"}])
    result = await ToolAgent().run(as_ctx(ctx))
    non_delta = [(k, p) for k, p in ctx.events if k != "assistant.delta"]
    assert [k for k, _ in non_delta] == ["tool.call", "tool.result", "assistant.message"]
    assert non_delta[0][1]["name"] == "calculator"
    assert non_delta[0][1]["arguments"] == {"expression": "(12 + 30) * 2"}
    assert non_delta[1][1] == {"id": non_delta[0][1]["id"], "name": "calculator", "result": 84}
    assert result.final_output == {"response": "The answer is 84.", "steps": 2, "stop_reason": "answered"}
    assert [m["role"] for m in result.final_messages] == ["user", "assistant", "tool", "assistant"]


async def test_tool_agent_reports_a_tool_error_to_the_model_and_goes_on() -> None:
    llm = FakeLLMClient(
        [
            FakeReply(tool_calls=(FakeToolCall("current_time", {"timezone": "Nowhere/Land"}),)),
            FakeReply("Sorry."),
        ]
    )
    ctx = RecordingContext([{"role": "user", "content": "time in Nowhere?"}])
    result = await ToolAgent(llm).run(as_ctx(ctx))
    [tool_result] = ctx.of("tool.result")
    assert "unknown time zone" in tool_result["error"]
    assert json.loads(llm.requests[1][0][-1]["content"])["error"] == tool_result["error"]
    assert result.final_output["response"] == "Sorry."


def test_default_tools_have_schemas_from_their_docstrings() -> None:
    specs = {t["function"]["name"]: t["function"] for t in default_tools().to_openai_format()}
    assert specs["calculator"]["parameters"]["required"] == ["expression"]
    assert specs["current_time"]["parameters"]["properties"]["timezone"]["default"] == "UTC"
    assert "IANA" in specs["current_time"]["parameters"]["properties"]["timezone"]["description"]


# -- LangGraph ------------------------------------------------------------------------------


def weather(city: str) -> str:
    """Weather of a city."""
    return f"sunny in {city}"


def build_graph() -> Any:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    answer_model = GenericFakeChatModel(messages=iter([AIMessage(content="It is sunny in Paris.")]))

    def plan(state: MessagesState) -> dict[str, Any]:
        call = {"id": "w1", "name": "weather", "args": {"city": "Paris"}}
        usage = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
        return {"messages": [AIMessage(content="", tool_calls=[call], usage_metadata=usage)]}

    async def answer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await answer_model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("plan", plan)
    graph.add_node("tools", ToolNode([weather]))
    graph.add_node("answer", answer)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "tools")
    graph.add_edge("tools", "answer")
    graph.add_edge("answer", END)
    return graph.compile()


async def test_the_langgraph_adapter_maps_tokens_tool_calls_and_results_to_run_events() -> None:
    pytest.importorskip("langgraph")
    from agentstream.consumers.examples.langgraph_agent import LangGraphAgent

    ctx = RecordingContext([{"role": "user", "content": "Weather in Paris?"}])
    result = await LangGraphAgent(build_graph(), key="weather_graph").run(as_ctx(ctx))

    deltas = "".join(p["delta"] for p in ctx.of("assistant.delta"))
    assert deltas == "It is sunny in Paris."
    non_delta = [(k, p) for k, p in ctx.events if k != "assistant.delta"]
    assert non_delta == [
        ("tool.call", {"id": "w1", "name": "weather", "arguments": {"city": "Paris"}}),
        ("tool.result", {"id": "w1", "name": "weather", "result": "sunny in Paris"}),
        ("assistant.message", {"role": "assistant", "content": "It is sunny in Paris."}),
    ]
    assert result.final_output == {"response": "It is sunny in Paris."}
    assert [m["role"] for m in result.final_messages] == ["user", "assistant", "tool", "assistant"]
    assert ctx.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}

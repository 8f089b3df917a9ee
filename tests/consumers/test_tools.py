"""Tools: schemas from type hints, validated execution, the tool loop's events."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import threading
import time
from typing import Annotated, Any, Literal, TypedDict

import pytest

from agentstream.consumers.errors import Retry
from agentstream.consumers.llm.fake import FakeLLMClient, FakeReply, FakeToolCall
from agentstream.consumers.llm.types import ToolCall
from agentstream.consumers.tools import (
    ArgumentError,
    Tool,
    ToolDefinition,
    ToolDefinitionError,
    ToolRegistry,
    parse_docstring,
    run_tool_loop,
    schema_for,
)
from tests.consumers.llm_fakes import RecordingContext


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(TypedDict):
    street: str
    zip: int


class PartialAddress(TypedDict, total=False):
    city: str


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0


@pytest.mark.parametrize(
    ("hint", "schema"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (Any, {}),
        (int | None, {"type": ["integer", "null"]}),
        (str | int, {"anyOf": [{"type": "string"}, {"type": "integer"}]}),
        (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
        (Literal[1, 2], {"type": "integer", "enum": [1, 2]}),
        (Color, {"type": "string", "enum": ["red", "green"]}),
        (Priority, {"type": "integer", "enum": [1, 2]}),
        (Color | None, {"anyOf": [{"type": "string", "enum": ["red", "green"]}, {"type": "null"}]}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (list[list[str]], {"type": "array", "items": {"type": "array", "items": {"type": "string"}}}),
        (set[str], {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
        (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
        (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (Annotated[int, "how many"], {"type": "integer", "description": "how many"}),
        (
            Address,
            {
                "type": "object",
                "properties": {"street": {"type": "string"}, "zip": {"type": "integer"}},
                "additionalProperties": False,
                "required": ["street", "zip"],
            },
        ),
        (
            PartialAddress,
            {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": False},
        ),
        (
            Point,
            {
                "type": "object",
                "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                "additionalProperties": False,
                "required": ["x"],
            },
        ),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_schema_for_every_supported_type(hint: Any, schema: dict[str, Any]) -> None:
    assert schema_for(hint) == schema


def test_an_unsupported_type_is_refused_with_the_list_of_supported_ones() -> None:
    with pytest.raises(ToolDefinitionError, match="use str, int, float"):
        schema_for(bytes)
    with pytest.raises(ToolDefinitionError, match="keys must be str"):
        schema_for(dict[int, str])


def search(query: str, limit: int = 5, color: Color = Color.RED, tags: list[str] | None = None) -> list[str]:
    """Search the catalogue for products.

    Matches names and descriptions.

    Args:
        query: Words to look for.
        limit (int): How many results to return,
            at most 50.
        color: Only this colour.

    Returns:
        Product names.
    """
    return [f"{query}-{i}" for i in range(limit)]


def test_from_function_takes_name_description_and_parameter_docs_from_the_function() -> None:
    tool = Tool.from_function(search)
    assert tool.name == "search"
    assert tool.description == "Search the catalogue for products."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "Words to look for."},
            "limit": {
                "type": "integer",
                "description": "How many results to return, at most 50.",
                "default": 5,
            },
            "color": {
                "type": "string",
                "enum": ["red", "green"],
                "description": "Only this colour.",
                "default": "red",
            },
            "tags": {"type": ["array", "null"], "items": {"type": "string"}, "default": None},
        },
        "additionalProperties": False,
        "required": ["query"],
    }
    assert tool.to_openai_format() == {
        "type": "function",
        "function": {"name": "search", "description": tool.description, "parameters": dict(tool.parameters)},
    }


def test_from_function_overrides_and_refusals() -> None:
    tool = Tool.from_function(search, name="find", description="Find things.", timeout_s=2)
    assert (tool.name, tool.description, tool.timeout_s) == ("find", "Find things.", 2)

    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    def star(*args: int) -> int:
        return 0

    with pytest.raises(ToolDefinitionError, match="needs a type hint"):
        Tool.from_function(untyped)
    with pytest.raises(ToolDefinitionError, match="named parameter"):
        Tool.from_function(star)
    with pytest.raises(ToolDefinitionError, match="letters, digits"):
        Tool.from_function(search, name="no spaces please")


def test_parse_docstring_reads_the_summary_and_args_section() -> None:
    summary, params = parse_docstring(
        """Add two numbers
        together.

        Args:
            a: The first.
            b (int): The second,
                an integer.
        """
    )
    assert summary == "Add two numbers together."
    assert params == {"a": "The first.", "b": "The second, an integer."}
    assert parse_docstring(None) == ("", {})


def place(point: Point, address: Address, color: Color, priority: Priority = Priority.LOW) -> dict[str, Any]:
    """Place an order."""
    return {"point": point, "zip": address["zip"], "color": color, "priority": priority}


async def test_execute_call_converts_arguments_to_dataclasses_and_enums_and_results_to_json() -> None:
    registry = ToolRegistry([place])
    result = await registry.execute_call(
        "place", '{"point": {"x": 1, "y": 2.5}, "address": {"street": "Main", "zip": 1000}, "color": "green"}'
    )
    assert result.ok, result.error
    assert result.result == {"point": {"x": 1.0, "y": 2.5}, "zip": 1000, "color": "green", "priority": 1}


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ('{"query": ', "not valid JSON"),
        ("[1, 2]", "expected an object"),
        ("{}", "missing required field(s) query"),
        ('{"query": "x", "colour": "red"}', "unknown field(s) colour"),
        ('{"query": 42}', "arguments.query: expected a string, got an integer (42)"),
        ('{"query": "x", "limit": "ten"}', "arguments.limit: expected an integer"),
        ('{"query": "x", "limit": true}', "arguments.limit: expected an integer, got a boolean"),
        ('{"query": "x", "color": "blue"}', "'blue' is not one of ['red', 'green']"),
        ('{"query": "x", "tags": ["a", 1]}', "arguments.tags"),
    ],
)
async def test_execute_call_turns_bad_arguments_into_an_error_the_model_can_read(
    arguments: str, error: str
) -> None:
    registry = ToolRegistry([search])
    result = await registry.execute_call("search", arguments, call_id="call_1")
    assert not result.ok
    assert result.error is not None and error in result.error
    assert result.event_payload() == {"id": "call_1", "name": "search", "error": result.error}
    assert '"error"' in result.content()


@dataclasses.dataclass
class Span:
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError("end before start")
        if self.end - self.start > 100:
            raise TypeError("a span is at most 100 long")


class Size(enum.Enum):
    SMALL = "small"
    LARGE = "large"

    @classmethod
    def _missing_(cls, value: object) -> Size | None:
        if value == "medium":
            raise ValueError("'medium' was retired; use 'small' or 'large'")
        return next((m for m in cls if m.value == value.lower()), None)  # type: ignore[attr-defined]


def measure(span: Span, size: Size = Size.SMALL, tags: set[Any] | None = None) -> int:
    """Measure a span."""
    return span.end - span.start


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ('{"span": {"start": 5, "end": 1}}', "invalid arguments: arguments.span: end before start"),
        (
            '{"span": {"start": 0, "end": 500}}',
            "invalid arguments: arguments.span: a span is at most 100 long",
        ),
        # _missing_ calls .lower() on an int: AttributeError
        ('{"span": {"start": 0, "end": 1}, "size": 3}', "arguments.size: 3 is not one of ['small', 'large']"),
        (
            '{"span": {"start": 0, "end": 1}, "size": "medium"}',
            "arguments.size: 'medium' is not one of ['small', 'large'] ('medium' was retired; use 'small' or 'large')",
        ),
        ('{"span": {"start": 0, "end": 1}, "tags": [[1]]}', "arguments.tags: unhashable type: 'list'"),
        ("[" * 100_000 + "]" * 100_000, "invalid arguments: RecursionError"),
    ],
    ids=[
        "post_init ValueError",
        "post_init TypeError",
        "_missing_ raising",
        "_missing_ explaining",
        "unhashable",
        "deep",
    ],
)
async def test_a_value_a_dataclass_or_enum_refuses_while_converting_is_an_error_naming_the_argument(
    arguments: str, error: str
) -> None:
    registry = ToolRegistry([measure])
    result = await registry.execute_call("measure", arguments, call_id="c")
    assert result.error is not None and error in result.error, result.error
    fitting = '{"span": {"start": 1, "end": 4}, "size": "LARGE"}'  # _missing_ accepting a value
    assert (await registry.execute_call("measure", fitting)).result == 3


async def test_execute_call_accepts_a_dict_or_json_and_applies_defaults() -> None:
    registry = ToolRegistry([search])
    assert (await registry.execute_call("search", {"query": "a", "limit": 2})).result == ["a-0", "a-1"]
    assert (await registry.execute_call("search", '{"query": "b"}')).result == [f"b-{i}" for i in range(5)]


async def test_an_unknown_tool_is_an_error_listing_the_known_ones() -> None:
    result = await ToolRegistry([search]).execute_call("serach", "{}")
    assert result.error == "unknown tool 'serach'; available tools: search"


async def test_a_raising_tool_becomes_an_error_result_not_a_crash() -> None:
    def divide(a: int, b: int) -> float:
        return a / b

    result = await ToolRegistry([divide]).execute_call("divide", {"a": 1, "b": 0})
    assert result.error == "ZeroDivisionError: division by zero"


async def test_a_runtime_decision_raised_by_a_tool_reaches_the_engine() -> None:
    async def rate_limited() -> str:
        raise Retry("upstream busy", delay_s=3)

    with pytest.raises(Retry):
        await ToolRegistry([rate_limited]).execute_call("rate_limited", {})


async def test_a_hanging_async_tool_times_out() -> None:
    async def hang() -> str:
        await asyncio.Event().wait()
        return "never"

    registry = ToolRegistry()
    registry.register(hang, timeout_s=0.05)
    result = await registry.execute_call("hang", {})
    assert result.error == "the tool did not finish within 0.05 s"


async def test_a_hanging_sync_tool_times_out_without_blocking_the_event_loop() -> None:
    release = threading.Event()
    started = threading.Event()

    def block() -> str:
        started.set()
        release.wait(10)
        return "late"

    registry = ToolRegistry([Tool.from_function(block, timeout_s=0.1)])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    try:
        result = await registry.execute_call("block", {})
    finally:
        ticking.cancel()
        release.set()  # let the worker thread finish
    assert started.is_set()
    assert result.error == "the tool did not finish within 0.1 s"
    assert ticks >= 3  # the loop kept running while the sync tool blocked its thread


async def test_sync_tools_run_in_a_thread_and_async_tools_are_awaited() -> None:
    loop_thread = threading.get_ident()

    def where_sync() -> bool:
        return threading.get_ident() == loop_thread

    async def where_async() -> bool:
        return threading.get_ident() == loop_thread

    registry = ToolRegistry([where_sync, where_async])
    assert (await registry.execute_call("where_sync", {})).result is False
    assert (await registry.execute_call("where_async", {})).result is True


def test_registry_lists_gets_and_refuses_duplicates() -> None:
    registry = ToolRegistry([search])
    assert registry.get("search") is not None and registry.get("nope") is None
    assert [t.name for t in registry.list_tools()] == ["search"]
    assert registry.to_openai_format()[0]["function"]["name"] == "search"
    with pytest.raises(ToolDefinitionError, match="registered already"):
        registry.register(search)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def test_run_tool_loop_emits_calls_results_and_the_answer_in_order() -> None:
    llm = FakeLLMClient(
        [
            FakeReply(
                "Let me add.",
                (FakeToolCall("add", {"a": 2, "b": 3}, id="c1"), FakeToolCall("add", {"a": 1}, id="c2")),
            ),
            FakeReply("2 + 3 = 5."),
        ]
    )
    ctx = RecordingContext([{"role": "user", "content": "What is 2+3?"}])
    result = await run_tool_loop(ctx, llm, [add], ctx.input_messages)

    assert result.stop_reason == "answered"
    assert result.steps == 2
    assert result.content == "2 + 3 = 5."
    non_delta = [(k, p) for k, p in ctx.events if k != "assistant.delta"]
    assert non_delta == [
        ("assistant.message", result.messages[1]),
        ("tool.call", {"id": "c1", "name": "add", "arguments": {"a": 2, "b": 3}}),
        ("tool.call", {"id": "c2", "name": "add", "arguments": {"a": 1}}),
        ("tool.result", {"id": "c1", "name": "add", "result": 5}),
        (
            "tool.result",
            {"id": "c2", "name": "add", "error": "invalid arguments: arguments: missing required field(s) b"},
        ),
        ("assistant.message", {"role": "assistant", "content": "2 + 3 = 5."}),
    ]
    assert [m["role"] for m in result.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert result.messages[2] == {"role": "tool", "tool_call_id": "c1", "name": "add", "content": "5"}
    # The second model call saw the tool results; both calls were offered the tool.
    assert llm.requests[1][0][-1]["tool_call_id"] == "c2"
    assert llm.requests[0][1] == [Tool.from_function(add).to_openai_format()]
    assert ctx.usage == result.usage.as_dict()
    assert result.usage.total_tokens > 0


async def test_run_tool_loop_stops_after_max_steps_with_every_call_answered() -> None:
    llm = FakeLLMClient([FakeReply(tool_calls=(FakeToolCall("add", {"a": 1, "b": 1}),))] * 5)
    ctx = RecordingContext()
    result = await run_tool_loop(ctx, llm, ToolRegistry([add]), ctx.input_messages, max_steps=3)
    assert result.stop_reason == "max_steps"
    assert result.steps == 3
    assert len(llm.requests) == 3
    assert len(ctx.of("tool.call")) == len(ctx.of("tool.result")) == 3
    assert result.messages[-1]["role"] == "tool"


async def test_run_tool_loop_cancels_sibling_calls_when_one_raises_a_runtime_error() -> None:
    sibling_cancelled = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            sibling_cancelled.set()
            raise
        return "never"

    async def busy() -> str:
        await asyncio.sleep(0)
        raise Retry("busy")

    llm = FakeLLMClient([FakeReply(tool_calls=(FakeToolCall("slow"), FakeToolCall("busy")))])
    ctx = RecordingContext()
    started = time.monotonic()
    with pytest.raises(Retry):
        await run_tool_loop(ctx, llm, [slow, busy], ctx.input_messages)
    await asyncio.wait_for(sibling_cancelled.wait(), 5)
    assert time.monotonic() - started < 5


# -- django-agent-runtime's tool API (0.3.6 runtime/interfaces.py) ------------------------------


async def test_execute_returns_the_tools_own_value_as_the_seed_did() -> None:
    registry = ToolRegistry([search, place])
    assert await registry.execute("search", {"query": "a", "limit": 2}) == ["a-0", "a-1"]
    assert await registry.execute("search", '{"query": "b", "limit": 1}') == ["b-0"]  # the model's text too
    placed = await registry.execute(
        "place", {"point": {"x": 1}, "address": {"street": "Main", "zip": 1}, "color": "red"}
    )
    assert placed["point"] == Point(1.0) and placed["color"] is Color.RED  # not made JSON: the value itself


async def test_execute_raises_what_the_seed_raised() -> None:
    def divide(a: int, b: int) -> float:
        return a / b

    async def hang() -> None:
        await asyncio.Event().wait()

    registry = ToolRegistry([divide, Tool.from_function(hang, timeout_s=0.05)])
    with pytest.raises(KeyError, match="Tool not found: nope"):
        await registry.execute("nope", {})
    with pytest.raises(ZeroDivisionError):
        await registry.execute("divide", {"a": 1, "b": 0})
    with pytest.raises(ArgumentError, match="missing required field"):
        await registry.execute("divide", {"a": 1})
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 s"):
        await registry.execute("hang", {})


async def test_a_seed_tool_definition_registers_executes_and_keeps_its_schema_and_flags() -> None:
    async def calculate(expression: str) -> str:
        return str(sum(int(term) for term in expression.split("+")))

    schema = {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "The math expression"}},
        "required": ["expression"],
    }
    definition = ToolDefinition(
        name="calculate",
        description="Evaluate a mathematical expression",
        parameters=schema,
        handler=calculate,
        has_side_effects=True,
        metadata={"owner": "maths"},
    )
    registry = ToolRegistry()
    registry.register(definition)

    assert isinstance(definition, Tool) and definition.handler is calculate is definition.fn
    assert (definition.has_side_effects, definition.requires_confirmation) == (True, False)
    assert definition.metadata == {"owner": "maths"}
    assert registry.get("calculate") is definition and registry.list_tools() == [definition]
    assert registry.get_tool_definitions() == registry.to_openai_format()
    assert registry.to_openai_format()[0]["function"]["parameters"] == schema
    assert await registry.execute("calculate", {"expression": "2+3"}) == "5"
    with pytest.raises(ArgumentError, match="missing required field"):
        await registry.execute("calculate", {})
    # what the schema does not declare is the handler's to refuse, as in the seed
    wrong = await registry.execute_call("calculate", {"expression": "1", "precision": 2})
    assert wrong.error is not None and wrong.error.startswith("TypeError")


def test_a_tool_call_reads_as_the_seed_did_by_key_and_as_a_dict_of_arguments() -> None:
    call = ToolCall("call_1", "get_weather", '{"location": "Paris"}')
    assert call["id"] == "call_1"
    assert call["function"] == {"name": "get_weather", "arguments": '{"location": "Paris"}'}
    assert call.parsed_arguments == {"location": "Paris"}
    assert ToolCall("c", "f", "").parsed_arguments == {}
    with pytest.raises(ValueError, match="not a JSON object"):
        _ = ToolCall("c", "f", "[1]").parsed_arguments
    with pytest.raises(json.JSONDecodeError):  # a ValueError; the seed made it {}
        _ = ToolCall("c", "f", '{"location": ').parsed_arguments

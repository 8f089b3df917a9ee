"""Tools an agent's model can call: schemas from type hints, safe execution, the tool loop.

- ``Tool.from_function(fn)``: the name, the description (docstring's first paragraph), and a JSON
  schema of the parameters from their type hints (str, int, float, bool, None, Optional/unions,
  Literal, Enum, list/tuple/set, dict[str, X], TypedDict, dataclass, Any); a parameter with a
  default is not required; ``Args:`` entries of the docstring describe the parameters.
- ``ToolRegistry.execute_call(name, arguments)`` takes the model's JSON text (or a dict), validates
  it against the same type hints (and converts: Enum members, dataclass instances, whose
  ``__post_init__`` or ``_missing_`` may refuse a value too), runs sync functions in a thread of
  their own and awaits async ones, under a per-tool timeout. Whatever goes wrong becomes a
  ``ToolResult`` with an ``error`` the model can read and act on, never a crashed run: a result
  too large for its ``tool.result`` event (``MAX_EVENT_BYTES``) too, so the event and the model
  read the same answer.
  The runtime's own decisions (``Retry``, ``PermanentFailure``, core's ``RetryableError`` /
  ``PermanentError``) and cancellation pass
  through on purpose: they are decisions about the run, not answers for the model.
- ``ToolRegistry.execute(name, arguments)`` is django-agent-runtime's: the same validation and
  timeout, but it returns the tool's value and raises (``KeyError`` for an unknown tool).
  ``ToolDefinition`` is its way to declare a tool: a hand-written schema and a ``handler``.
- ``run_tool_loop(ctx, llm, tools, messages)``: ask the model, run the calls it makes, feed the
  results back, until it answers without tools or ``max_steps`` model calls were made.

A timed-out sync function keeps its thread until it returns (Python cannot kill a thread); the
run goes on without it. Sync tools therefore run in ``SyncToolThreads``, ``TOOL_THREADS`` threads of
their own, never in the event loop's default executor, whose threads resolve host names
(``loop.getaddrinfo``, how httpx reaches the LLM) for every run of the worker. When every one of
them is held by a tool given up on, a call is answered with an error at once instead of waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import enum
import functools
import inspect
import json
import re
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agentstream.consumers.errors import AgentFailure
from agentstream.consumers.llm.config import current_settings
from agentstream.consumers.llm.streaming import EmittingContext, stream_completion
from agentstream.consumers.llm.types import LLMClient, Message, ToolCall, Usage
from agentstream.consumers.tracing import current_tracer
from agentstream.core.codec import pack_payload
from agentstream.core.errors import EventEncodingError, PermanentError, RetryableError
from agentstream.core.events import EventType

JSON = dict[str, Any]
DEFAULT_TOOL_TIMEOUT_S = 30.0
# What a tool (or a validating __post_init__) raises to decide its run: passed through, not answered.
RUNTIME_DECISIONS = (AgentFailure, RetryableError, PermanentError)


class ToolDefinitionError(TypeError):
    """A function that cannot become a tool (no type hint, ``*args``, an unsupported type)."""


class ArgumentError(ValueError):
    """The model's arguments do not fit the tool's parameters; the message says where and why."""


class SyncToolThreadsExhausted(RuntimeError):
    """Every thread for sync tools is held by a tool still running past its timeout: not run."""


# ---------------------------------------------------------------------------------------------
# schemas from type hints


def schema_for(hint: Any) -> JSON:
    """The JSON schema of one type hint (raises ``ToolDefinitionError`` for an unsupported one)."""
    if hint is Any or hint is object:
        return {}
    if hint is type(None) or hint is None:
        return {"type": "null"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        inner = schema_for(args[0])
        description = next((a for a in args[1:] if isinstance(a, str)), None)
        return {**inner, "description": description} if description else inner
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X or null
            inner = schema_for(options[0])
            if "type" in inner and isinstance(inner["type"], str) and "enum" not in inner:
                return {**inner, "type": [inner["type"], "null"]}
            return {"anyOf": [inner, {"type": "null"}]}
        return {"anyOf": [schema_for(a) for a in args]}
    if origin is Literal:
        return {**_literal_type(args), "enum": list(args)}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [member.value for member in hint]
        return {**_literal_type(tuple(values)), "enum": values}
    if origin in (list, set, frozenset, Sequence, typing.Sequence) or hint in (list, set, frozenset):
        schema: JSON = {"type": "array", "items": schema_for(args[0]) if args else {}}
        if origin in (set, frozenset):
            schema["uniqueItems"] = True
        return schema
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": schema_for(args[0])}
        return {
            "type": "array",
            "prefixItems": [schema_for(a) for a in args],
            "minItems": len(args),
            "maxItems": len(args),
        }
    if origin in (dict, Mapping, typing.Mapping) or hint is dict:
        if args and args[0] is not str:
            raise ToolDefinitionError(
                f"dict keys must be str in a tool schema (JSON objects), not {args[0]!r}"
            )
        return {"type": "object", "additionalProperties": schema_for(args[1]) if args else {}}
    if typing.is_typeddict(hint):
        hints = typing.get_type_hints(hint, include_extras=True)
        required = sorted(getattr(hint, "__required_keys__", hints))
        return _object_schema({k: schema_for(v) for k, v in hints.items()}, required)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = typing.get_type_hints(hint, include_extras=True)
        properties: dict[str, JSON] = {}
        required = []
        for f in dataclasses.fields(hint):
            properties[f.name] = schema_for(hints[f.name])
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
        return _object_schema(properties, required)
    raise ToolDefinitionError(
        f"type {hint!r} is not supported in tool parameters; use str, int, float, bool, Optional, "
        "Literal, Enum, list, dict[str, X], a TypedDict or a dataclass"
    )


def _literal_type(values: tuple[Any, ...]) -> JSON:
    kinds = {type(v) for v in values}
    names = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    if len(kinds) == 1 and next(iter(kinds)) in names:
        return {"type": names[next(iter(kinds))]}
    return {}


def _object_schema(properties: dict[str, JSON], required: Iterable[str]) -> JSON:
    schema: JSON = {"type": "object", "properties": properties, "additionalProperties": False}
    required = list(required)
    if required:
        schema["required"] = required
    return schema


# ---------------------------------------------------------------------------------------------
# validation + conversion of the model's arguments (the same walk as the schema)


def convert(value: Any, hint: Any, path: str) -> Any:
    """``value`` (decoded JSON) as ``hint``, or ``ArgumentError`` naming ``path``."""
    if hint is Any or hint is object:
        return value
    if hint is type(None) or hint is None:
        if value is not None:
            raise ArgumentError(f"{path}: expected null, got {_kind(value)}")
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise ArgumentError(f"{path}: expected a boolean, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 3.0 from a model that writes numbers loosely
        if not isinstance(value, int) or isinstance(value, bool):
            raise ArgumentError(f"{path}: expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ArgumentError(f"{path}: expected a number, got {_kind(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ArgumentError(f"{path}: expected a string, got {_kind(value)}")
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return convert(value, args[0], path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return convert(value, option, path)
            except ArgumentError as exc:
                errors.append(str(exc))
        raise ArgumentError(f"{path}: {_kind(value)} matches none of the allowed types ({'; '.join(errors)})")
    if origin is Literal:
        if value not in args or any(type(value) is not type(a) for a in args if a == value):
            raise ArgumentError(f"{path}: {value!r} is not one of {list(args)!r}")
        return value
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except RUNTIME_DECISIONS:
            raise
        except Exception as exc:  # ValueError, or whatever a custom _missing_ raised
            allowed = f"{path}: {value!r} is not one of {[m.value for m in hint]!r}"
            said = str(exc)
            if said and said != f"{value!r} is not a valid {hint.__qualname__}":
                allowed = f"{allowed} ({said})"
            raise ArgumentError(allowed) from exc
    if origin in (list, set, frozenset, tuple, Sequence, typing.Sequence) or hint in (list, set, frozenset):
        if not isinstance(value, list):
            raise ArgumentError(f"{path}: expected an array, got {_kind(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ArgumentError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(
                convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        items = [convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        if origin is tuple:
            return tuple(items)
        if origin in (set, frozenset) or hint in (set, frozenset):
            try:
                return (frozenset if frozenset in (origin, hint) else set)(items)
            except TypeError as exc:  # an unhashable item (a list, an object) in a set[Any]
                raise ArgumentError(f"{path}: {exc}") from exc
        return items
    if origin in (dict, Mapping, typing.Mapping) or hint is dict:
        if not isinstance(value, dict):
            raise ArgumentError(f"{path}: expected an object, got {_kind(value)}")
        item = args[1] if args else Any
        return {k: convert(v, item, f"{path}.{k}") for k, v in value.items()}
    if typing.is_typeddict(hint):
        hints = typing.get_type_hints(hint, include_extras=True)
        required = set(getattr(hint, "__required_keys__", hints))
        return _convert_object(value, hints, required, path)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = typing.get_type_hints(hint, include_extras=True)
        required = {
            f.name
            for f in dataclasses.fields(hint)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        fields = {f.name: hints[f.name] for f in dataclasses.fields(hint)}
        kwargs = _convert_object(value, fields, required, path)
        try:
            return hint(**kwargs)
        except RUNTIME_DECISIONS:
            raise
        except Exception as exc:  # __post_init__ validating: the model must hear which argument
            raise ArgumentError(f"{path}: {str(exc) or type(exc).__name__}") from exc
    raise ArgumentError(f"{path}: type {hint!r} is not supported")


def _convert_object(value: Any, hints: Mapping[str, Any], required: set[str], path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ArgumentError(f"{path}: expected an object, got {_kind(value)}")
    missing = sorted(required - value.keys())
    if missing:
        raise ArgumentError(f"{path}: missing required field(s) {', '.join(missing)}")
    extra = sorted(value.keys() - hints.keys())
    if extra:
        raise ArgumentError(f"{path}: unknown field(s) {', '.join(extra)}; allowed: {', '.join(hints)}")
    return {k: convert(v, hints[k], f"{path}.{k}") for k, v in value.items()}


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    return f"{names.get(type(value), type(value).__name__)} ({json.dumps(value, default=str)[:40]})"


# ---------------------------------------------------------------------------------------------
# docstrings

_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Examples?|Notes?)\s*:\s*$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style docstring."""
    text = inspect.cleandoc(doc or "")
    if not text:
        return "", {}
    lines = text.splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            break
        summary.append(line.strip())
    params: dict[str, str] = {}
    section = None
    current: str | None = None
    indent = 0
    for line in lines:
        stripped = line.strip()
        heading = _SECTION.match(stripped)
        if heading and len(line) - len(line.lstrip()) == 0:
            section, current = heading.group(1), None
            continue
        if section not in ("Args", "Arguments", "Parameters") or not stripped:
            continue
        line_indent = len(line) - len(line.lstrip())
        match = _ARG_LINE.match(stripped)
        if match and (current is None or line_indent <= indent):
            current, indent = match.group(1).lstrip("*"), line_indent
            params[current] = match.group(2).strip()
        elif current is not None:  # a continuation line
            params[current] = f"{params[current]} {stripped}".strip()
    return " ".join(summary), params


# ---------------------------------------------------------------------------------------------
# tools


@dataclass(frozen=True, slots=True)
class ToolResult:
    name: str
    result: Any = None
    error: str | None = None
    call_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def content(self) -> str:
        """The ``tool`` message content the model reads."""
        if self.error is not None:
            return json.dumps({"error": self.error})
        return self.result if isinstance(self.result, str) else json.dumps(self.result)

    def event_payload(self) -> JSON:
        payload: JSON = {"id": self.call_id, "name": self.name}
        if self.error is not None:
            payload["error"] = self.error
        else:
            payload["result"] = self.result
        return payload


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: Mapping[str, Any]
    fn: Callable[..., Any] = field(repr=False)
    timeout_s: float | None = None
    hints: Mapping[str, Any] = field(default_factory=dict, repr=False)
    required: frozenset[str] = frozenset()
    # django-agent-runtime's flags, kept for your code (a confirmation step, an audit); the runtime
    # does not act on them, as the seed did not
    has_side_effects: bool = False
    requires_confirmation: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def handler(self) -> Callable[..., Any]:
        """``fn`` under the seed's name."""
        return self.fn

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
    ) -> Tool:
        tool_name: str = name or str(getattr(fn, "__name__", ""))
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tool_name):
            raise ToolDefinitionError(
                f"tool name {tool_name!r} must be 1-64 letters, digits, '_' or '-'; pass name=..."
            )
        summary, arg_docs = parse_docstring(inspect.getdoc(fn))
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except NameError as exc:
            raise ToolDefinitionError(f"tool {tool_name!r}: a type hint cannot be resolved ({exc})") from exc
        properties: dict[str, JSON] = {}
        required: list[str] = []
        param_hints: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise ToolDefinitionError(
                    f"tool {tool_name!r}: parameter {param.name!r} must be a named parameter (no *args, **kwargs, /)"
                )
            if param.name not in hints:
                raise ToolDefinitionError(
                    f"tool {tool_name!r}: parameter {param.name!r} needs a type hint for its schema"
                )
            try:
                schema = schema_for(hints[param.name])
            except ToolDefinitionError as exc:
                raise ToolDefinitionError(f"tool {tool_name!r}, parameter {param.name!r}: {exc}") from None
            if param.name in arg_docs and "description" not in schema:
                schema = {**schema, "description": arg_docs[param.name]}
            if param.default is inspect.Parameter.empty:
                required.append(param.name)
            else:
                default = _json_default(param.default)
                if default is not _NO_DEFAULT:
                    schema = {**schema, "default": default}
            properties[param.name] = schema
            param_hints[param.name] = hints[param.name]
        return cls(
            name=tool_name,
            description=description if description is not None else summary,
            parameters=_object_schema(properties, required),
            fn=fn,
            timeout_s=timeout_s,
            hints=param_hints,
            required=frozenset(required),
        )

    def to_openai_format(self) -> JSON:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }

    def bind(self, arguments: str | Mapping[str, Any] | None) -> dict[str, Any]:
        """Parse and validate the model's arguments into keyword arguments (``ArgumentError`` if not)."""
        if arguments is None or arguments == "":
            decoded: Any = {}
        elif isinstance(arguments, str):
            try:
                decoded = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise ArgumentError(
                    f"arguments are not valid JSON ({exc.msg} at position {exc.pos})"
                ) from None
        else:
            decoded = dict(arguments)
        if not self.hints and self.parameters.get("properties"):
            # a hand-written schema (ToolDefinition): no hints to convert by; the function checks its own
            passed = dict.fromkeys(decoded, Any) if isinstance(decoded, dict) else {}
            return _convert_object(decoded, passed, self._schema_required(), "arguments")
        return _convert_object(decoded, self.hints, set(self.required), "arguments")

    def _schema_required(self) -> set[str]:
        required = self.parameters.get("required")
        return {str(name) for name in required} if isinstance(required, list) else set()


class ToolDefinition(Tool):
    """django-agent-runtime's tool declaration: ``ToolDefinition(name, description, parameters,
    handler)`` with a hand-written JSON schema. It is a ``Tool`` (``fn`` is the ``handler``);
    arguments are checked against the schema's ``required`` only, so prefer ``Tool.from_function``
    for new tools: it validates every argument's type."""

    __slots__ = ()

    def __init__(
        self,
        name: str,
        description: str,
        parameters: Mapping[str, Any],
        handler: Callable[..., Any],
        has_side_effects: bool = False,
        requires_confirmation: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            name=name,
            description=description,
            parameters=parameters,
            fn=handler,
            has_side_effects=has_side_effects,
            requires_confirmation=requires_confirmation,
            metadata=dict(metadata or {}),
        )


_NO_DEFAULT = object()


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return _NO_DEFAULT
    return value


def _jsonable(value: Any) -> Any:
    """A tool's return value as plain JSON data (for the event payload and the model)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=_json_fallback))


def _recordable(result: ToolResult, max_bytes: int) -> tuple[ToolResult, JSON]:
    """``result`` if its ``tool.result`` event can be written (``max_bytes``: ``MAX_EVENT_BYTES``);
    else an error the model reads instead (a long error is cut to fit). The event and the model's
    message are made from the one ``ToolResult``, so they say the same thing. Beside it, its event
    payload, packed once here where it fits, so that emitting it does not encode it again."""
    try:
        packed = pack_payload(EventType.TOOL_RESULT, result.event_payload(), sys.maxsize)
    except EventEncodingError as exc:
        unrecordable = dataclasses.replace(
            result, result=None, error=f"the tool's result cannot be recorded: {exc}"
        )
        return unrecordable, unrecordable.event_payload()
    size = len(packed.data)
    if size <= max_bytes:
        return result, packed
    if result.error is None:
        oversized = dataclasses.replace(
            result,
            result=None,
            error=f"the tool's result is {size} bytes, over MAX_EVENT_BYTES={max_bytes}: "
            "return less, or store it and return a reference",
        )
        return oversized, oversized.event_payload()
    note = f" ... (cut: the error was {len(result.error)} characters)"
    keep = max(0, len(result.error) - (size - max_bytes) - len(note) - 16)  # a character is 1+ bytes
    cut = dataclasses.replace(result, error=result.error[:keep] + note)
    return cut, cut.event_payload()


def _json_fallback(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


class ToolRegistry:
    def __init__(
        self,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        *,
        default_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
        sync_threads: SyncToolThreads | None = None,
    ):
        self.default_timeout_s = default_timeout_s
        # where sync tools run: the process's SYNC_TOOL_THREADS unless given others (tests)
        self.sync_threads = sync_threads if sync_threads is not None else SYNC_TOOL_THREADS
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool | Callable[..., Any], **options: Any) -> Tool:
        """Add a ``Tool`` (or a function, made one with ``Tool.from_function(fn, **options)``)."""
        made = tool if isinstance(tool, Tool) else Tool.from_function(tool, **options)
        if made.name in self._tools:
            raise ToolDefinitionError(
                f"a tool named {made.name!r} is registered already; pass name=... to rename"
            )
        self._tools[made.name] = made
        return made

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def list_tools(self) -> list[Tool]:
        return list(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def to_openai_format(self) -> list[JSON]:
        return [tool.to_openai_format() for tool in self._tools.values()]

    def get_tool_definitions(self) -> list[JSON]:
        """``to_openai_format()`` under the name django-agent-runtime also had."""
        return self.to_openai_format()

    async def execute(self, name: str, arguments: str | Mapping[str, Any] | None = None) -> Any:
        """Run a tool and return its value, as django-agent-runtime did; raises ``KeyError`` for an
        unknown tool, ``ArgumentError`` for arguments that do not fit, ``TimeoutError``,
        ``SyncToolThreadsExhausted``, or what the tool raised. ``execute_call`` answers the model
        instead of raising."""
        tool = self._tools.get(name)
        if tool is None:
            raise KeyError(f"Tool not found: {name}")
        return await self._invoke(tool, tool.bind(arguments))

    async def execute_call(
        self, name: str, arguments: str | Mapping[str, Any] | None, *, call_id: str | None = None
    ) -> ToolResult:
        """Run one call the model made; every failure is a ``ToolResult.error`` for the model to read,
        a result larger than ``MAX_EVENT_BYTES`` as its ``tool.result`` event too."""
        return (await self._recorded_call(name, arguments, call_id))[0]

    async def _recorded_call(
        self, name: str, arguments: str | Mapping[str, Any] | None, call_id: str | None
    ) -> tuple[ToolResult, JSON]:
        """``execute_call``'s result and its ``tool.result`` payload, encoded once."""
        return _recordable(await self._answer(name, arguments, call_id), current_settings().MAX_EVENT_BYTES)

    async def _answer(
        self, name: str, arguments: str | Mapping[str, Any] | None, call_id: str | None
    ) -> ToolResult:
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(self._tools) or "none"
            return ToolResult(name, error=f"unknown tool {name!r}; available tools: {known}", call_id=call_id)
        try:
            kwargs = tool.bind(arguments)
        except ArgumentError as exc:
            return ToolResult(name, error=f"invalid arguments: {exc}", call_id=call_id)
        except RUNTIME_DECISIONS:
            raise
        except Exception as exc:  # e.g. RecursionError: JSON nested too deep to decode
            return ToolResult(name, error=f"invalid arguments: {type(exc).__name__}: {exc}", call_id=call_id)
        try:
            value = await self._invoke(tool, kwargs)
        except (TimeoutError, SyncToolThreadsExhausted) as exc:
            return ToolResult(name, error=str(exc), call_id=call_id)
        except RUNTIME_DECISIONS:
            raise
        except Exception as exc:
            return ToolResult(name, error=f"{type(exc).__name__}: {exc}", call_id=call_id)
        try:
            result = _jsonable(value)
        except Exception as exc:  # TypeError, ValueError (a cycle), RecursionError, a raising __str__
            return ToolResult(name, error=f"the tool's result is not JSON data: {exc}", call_id=call_id)
        return ToolResult(name, result=result, call_id=call_id)

    async def _invoke(self, tool: Tool, kwargs: Mapping[str, Any]) -> Any:
        """Call the tool in a span, under its timeout."""
        timeout_s = tool.timeout_s if tool.timeout_s is not None else self.default_timeout_s
        tracer = current_tracer()
        with tracer.span(
            f"tool {tool.name}", kind="tool", attributes={"agentstream.tool": tool.name}
        ) as span:
            try:
                try:
                    async with asyncio.timeout(timeout_s):
                        value = await _call(tool.fn, kwargs, self.sync_threads)
                except TimeoutError:
                    raise TimeoutError(f"the tool did not finish within {timeout_s:g} s") from None
            except Exception as exc:
                span.record_error(type(exc).__name__)
                raise
            if tracer.capture_content:
                span.record_content(input=dict(kwargs), output=value)
        return value


class SyncToolThreads:
    """The threads sync tools run in: ``max_threads`` of them (default: the ``TOOL_THREADS``
    setting, 32), named ``agentstream-tool_<n>``, made at the first sync call.

    Their own, not the event loop's default executor: a tool that hangs keeps its thread until it
    returns, and in the default executor (``min(32, cpus + 4)`` threads) a few such tools would
    starve ``loop.getaddrinfo`` (httpx resolving the LLM's host) and every ``to_thread`` of every
    run of the worker. A call waits for a free thread within its tool's timeout (one that never
    started is not run later); when every thread is held by a tool given up on (timed out or
    cancelled, still running), a call is refused at once with ``SyncToolThreadsExhausted``
    rather than left waiting for threads that may never come back.
    """

    def __init__(self, max_threads: int | None = None) -> None:
        if max_threads is not None and max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self._max_threads = max_threads
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._abandoned = 0  # calls given up on whose function still runs, holding a thread

    @property
    def max_threads(self) -> int:
        if self._max_threads is None:
            self._max_threads = current_settings().TOOL_THREADS
        return self._max_threads

    @property
    def abandoned(self) -> int:
        """Threads held by tools that timed out (or whose call was cancelled) and still run."""
        with self._lock:
            return self._abandoned

    async def run(self, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
        """``fn(**kwargs)`` in one of the threads (with the caller's contextvars, as ``to_thread``)."""
        abandoned, max_threads = self.abandoned, self.max_threads
        if abandoned >= max_threads:
            raise SyncToolThreadsExhausted(
                f"{abandoned} sync tools are still running past their timeout, holding every thread "
                f"for sync tools (TOOL_THREADS={max_threads}); this call was not run: "
                "try again later, or go on without this tool"
            )
        call = functools.partial(contextvars.copy_context().run, fn, **kwargs)
        future = self._pool(max_threads).submit(call)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel():  # it started: its thread is held until the function returns
                self._abandon(future)
            raise

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop the threads (``wait``: once their functions return); the next call makes new ones."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)

    def _pool(self, max_threads: int) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_threads, thread_name_prefix="agentstream-tool"
                )
            return self._executor

    def _abandon(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._abandoned += 1
        future.add_done_callback(self._returned)  # at once if it has just returned

    def _returned(self, _future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._abandoned -= 1


# The threads of this process's sync tools (made at the first sync tool call).
SYNC_TOOL_THREADS = SyncToolThreads()


async def _call(fn: Callable[..., Any], kwargs: Mapping[str, Any], threads: SyncToolThreads) -> Any:
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):  # noqa: B004
        return await fn(**kwargs)
    # A sync function would block the event loop (and every other run of this worker).
    value = await threads.run(fn, kwargs)
    if inspect.isawaitable(value):
        return await value
    return value


# ---------------------------------------------------------------------------------------------
# the tool loop


@dataclass(frozen=True, slots=True)
class ToolLoopResult:
    message: Message  # the last assistant message
    messages: list[Message]  # the whole conversation, inputs included
    steps: int  # model calls made
    usage: Usage
    stop_reason: Literal["answered", "max_steps"]

    @property
    def content(self) -> str:
        return str(self.message.get("content") or "")


async def run_tool_loop(
    ctx: EmittingContext,
    llm: LLMClient,
    tools: ToolRegistry | Iterable[Tool | Callable[..., Any]],
    messages: Sequence[Mapping[str, Any]],
    *,
    max_steps: int = 8,
    model: str | None = None,
    **kwargs: Any,
) -> ToolLoopResult:
    """Ask, run the requested tools, answer, until the model replies without tools.

    Emits ``assistant.delta``/``assistant.message`` (through ``stream_completion``), then per
    call ``tool.call`` {id, name, arguments} and ``tool.result`` {id, name, result | error}.
    Calls of one turn run concurrently; their events keep the model's order. After ``max_steps``
    model calls the loop stops (``stop_reason="max_steps"``), with every requested tool answered
    so the history stays valid for the next turn.
    """
    if max_steps < 1:
        raise ValueError("max_steps must be at least 1")
    registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
    specs = registry.to_openai_format() or None
    history: list[Message] = [dict(m) for m in messages]
    usage = Usage()
    for step in range(1, max_steps + 1):
        response = await stream_completion(ctx, llm, history, model=model, tools=specs, **kwargs)
        usage = usage + response.usage
        history.append(dict(response.message))
        if not response.tool_calls:
            return ToolLoopResult(response.message, history, step, usage, "answered")
        history.extend(await _run_calls(ctx, registry, response.tool_calls))
    return ToolLoopResult(response.message, history, max_steps, usage, "max_steps")


async def _run_calls(
    ctx: EmittingContext, registry: ToolRegistry, calls: Sequence[ToolCall]
) -> list[Message]:
    for call in calls:
        await _emit_call(ctx, call)
    tasks = [asyncio.ensure_future(registry._recorded_call(c.name, c.arguments, c.id)) for c in calls]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # one call raised a runtime error (Retry, ...): stop the others too
            task.cancel()
        raise
    out: list[Message] = []
    for result, payload in results:
        answer = await _emit_result(ctx, result, payload)
        out.append(
            {"role": "tool", "tool_call_id": answer.call_id, "name": answer.name, "content": answer.content()}
        )
    return out


async def _emit_call(ctx: EmittingContext, call: ToolCall) -> None:
    """Emit ``tool.call``. Arguments the model wrote too large to record (over MAX_EVENT_BYTES)
    are left out of the event, not the call: the tool still gets them."""
    payload = {"id": call.id, "name": call.name, "arguments": _arguments_payload(call)}
    try:
        await ctx.emit(EventType.TOOL_CALL, payload)
    except EventEncodingError as exc:
        note = f"(not recorded: {str(exc)[:300]})"
        await ctx.emit(EventType.TOOL_CALL, {**payload, "arguments": note})


async def _emit_result(ctx: EmittingContext, result: ToolResult, payload: JSON) -> ToolResult:
    """Emit ``tool.result`` (``payload``: the result's, packed); the result the event holds (what
    the model is told)."""
    try:
        await ctx.emit(EventType.TOOL_RESULT, payload)
    except EventEncodingError as exc:
        # execute_call fits results to the configured MAX_EVENT_BYTES; a context that allows less
        # (or a result it cannot encode) still gets an answer, never a crashed loop
        result = dataclasses.replace(
            result,
            result=None,
            error=f"the tool's result cannot be recorded ({str(exc)[:500]}): "
            "return less, or store it and return a reference",
        )
        await ctx.emit(EventType.TOOL_RESULT, result.event_payload())
    return result


def _arguments_payload(call: ToolCall) -> Any:
    """Parsed arguments for the event (readable in the UI), the raw text when it is not JSON."""
    try:
        return json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return call.arguments

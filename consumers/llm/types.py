"""The framework-neutral LLM port: OpenAI-style messages in, values out.

Messages are plain dicts in the OpenAI chat format (``{"role": "user", "content": "..."}``,
assistant ``tool_calls``, ``tool`` messages with ``tool_call_id``), because that is what agents,
the event payloads and the read-models already speak. Every provider maps to and from it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]
ToolSpec = Mapping[
    str, Any
]  # OpenAI format: {"type": "function", "function": {name, description, parameters}}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model asks for; ``arguments`` is the JSON text the model wrote (maybe invalid)."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    def __getitem__(self, key: str) -> Any:
        """The OpenAI dict's keys (``call["function"]["name"]``), as django-agent-runtime's README reads them."""
        return self.to_openai()[key]

    @property
    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict (django-agent-runtime's ``arguments``); ``ValueError`` when the
        model wrote no JSON object (the seed made that ``{}``, which hid the model's mistake)."""
        decoded = json.loads(self.arguments or "{}")
        if not isinstance(decoded, dict):
            raise ValueError(
                f"tool call {self.name!r}: arguments are not a JSON object: {self.arguments[:80]!r}"
            )
        return decoded

    @classmethod
    def from_openai(cls, raw: Mapping[str, Any]) -> ToolCall:
        function = raw.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {})
        return cls(id=str(raw.get("id") or ""), name=str(function.get("name") or ""), arguments=arguments)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


def assistant_message(content: str | None, tool_calls: Sequence[ToolCall] = ()) -> Message:
    """The assistant turn in OpenAI format; ``tool_calls`` only when there are some."""
    message: Message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [call.to_openai() for call in tool_calls]
    return message


@dataclass(frozen=True, slots=True)
class LLMResponse:
    message: Message
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    finish_reason: str | None
    model: str

    @property
    def content(self) -> str:
        return str(self.message.get("content") or "")


@dataclass(frozen=True, slots=True)
class LLMChunk:
    """One piece of a streamed completion.

    ``delta`` is new text; ``tool_calls`` are complete calls (providers assemble the argument
    fragments before yielding them); ``usage`` and ``finish_reason`` come with the last chunks.
    """

    delta: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None


@runtime_checkable
class LLMClient(Protocol):
    """A chat model. ``stream`` is an async generator that closes its HTTP response when it is
    closed (``aclose``) or cancelled."""

    provider: str
    default_model: str

    async def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> LLMResponse: ...

    def stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[LLMChunk, None]: ...

    async def aclose(self) -> None:
        """Close the client's connection pool (a worker does it at shutdown)."""


class ResponseAssembler:
    """Folds chunks into one ``LLMResponse`` (shared by every provider's ``generate`` and the helpers)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.parts: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None

    def add(self, chunk: LLMChunk) -> None:
        if chunk.delta:
            self.parts.append(chunk.delta)
        self.tool_calls.extend(chunk.tool_calls)
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason

    @property
    def content(self) -> str:
        return "".join(self.parts)

    def response(self) -> LLMResponse:
        content = self.content
        calls = tuple(self.tool_calls)
        return LLMResponse(
            message=assistant_message(content if content or not calls else None, calls),
            tool_calls=calls,
            usage=self.usage or Usage(),
            finish_reason=self.finish_reason,
            model=self.model,
        )

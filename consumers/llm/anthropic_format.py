"""OpenAI-style messages <-> Anthropic Messages API, both ways, as pure functions.

- ``system`` and ``developer`` messages -> the top-level ``system`` text (joined by blank lines);
- ``image_url`` parts -> ``image`` blocks (a ``data:`` URL as base64, an http(s) URL as a url);
- assistant ``tool_calls`` -> ``tool_use`` blocks (arguments parsed into ``input``);
- ``tool`` messages -> ``tool_result`` blocks in ONE user turn (consecutive results merged, as
  Anthropic requires every result of a turn to answer it together); a user text that follows
  results joins that turn after them, as does a user message that follows another;
- an assistant turn with no text and no tool calls (an empty completion) is left out: Anthropic
  rejects empty content, and the user turns on either side of it merge into one;
- OpenAI call options -> Anthropic's (``options_to_anthropic``);
- anything with no Anthropic equivalent -> ``PermanentFailure`` (it would fail every attempt);
- usage ``input_tokens``/``output_tokens`` -> prompt/completion/total tokens;
- stop reasons -> OpenAI finish reasons.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agentstream.consumers.errors import PermanentFailure
from agentstream.consumers.llm.types import (
    LLMChunk,
    LLMResponse,
    Message,
    ToolCall,
    ToolSpec,
    Usage,
    assistant_message,
)

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
}
STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}
SYSTEM_ROLES = frozenset({"system", "developer"})  # developer: OpenAI's newer name for system
TOOL_CHOICES = {"auto": "auto", "required": "any", "any": "any", "none": "none"}
ANTHROPIC_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})


def to_anthropic(messages: Sequence[Mapping[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """(system, messages) for ``messages.create``."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = message.get("role")
        if role in SYSTEM_ROLES:
            system.append(_text(message.get("content")))
        elif role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": _text(message.get("content")),
            }
            if message.get("is_error"):
                block["is_error"] = True
            _append_user_blocks(out, [block])
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = _text(message.get("content"))
            if text.strip():  # Anthropic rejects a text block of whitespace only
                blocks.append({"type": "text", "text": text})
            for raw in message.get("tool_calls") or ():
                call = ToolCall.from_openai(raw)
                blocks.append(
                    {"type": "tool_use", "id": call.id, "name": call.name, "input": _parse_args(call)}
                )
            if blocks:  # an empty completion said nothing: no turn (Anthropic rejects empty content)
                out.append({"role": "assistant", "content": blocks})
        elif role == "user":
            content = message.get("content")
            where = f"message {index}"
            if out and out[-1]["role"] == "user":
                _append_user_blocks(out, _user_blocks(content, where))
            else:
                out.append(
                    {
                        "role": "user",
                        "content": content if isinstance(content, str) else _user_blocks(content, where),
                    }
                )
        else:
            raise PermanentFailure(
                f"message {index}: role {role!r} has no Anthropic equivalent; "
                "use system, developer, user, assistant or tool"
            )
    return ("\n\n".join(system) if system else None), out


def from_anthropic(system: str | None, messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """The inverse of ``to_anthropic``: Anthropic turns back to OpenAI-style messages."""
    out: list[Message] = [{"role": "system", "content": system}] if system else []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": str(message.get("role")), "content": content})
            continue
        blocks = list(content or ())
        if message.get("role") == "assistant":
            text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
            calls = [
                ToolCall(b["id"], b["name"], json.dumps(b.get("input") or {}))
                for b in blocks
                if b.get("type") == "tool_use"
            ]
            out.append(assistant_message(text or None, calls))
            continue
        for block in blocks:
            if block.get("type") == "tool_result":
                tool: Message = {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id", ""),
                    "content": _text(block.get("content")),
                }
                if block.get("is_error"):
                    tool["is_error"] = True
                out.append(tool)
            elif block.get("type") == "text":
                out.append({"role": "user", "content": block.get("text", "")})
    return out


def tools_to_anthropic(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        function = tool.get("function", tool)
        out.append(
            {
                "name": function["name"],
                "description": function.get("description", ""),
                "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
            }
        )
    return out


def options_to_anthropic(options: Mapping[str, Any], *, has_tools: bool) -> dict[str, Any]:
    """OpenAI call options -> Anthropic's: ``stop`` -> ``stop_sequences``, ``max_completion_tokens``
    -> ``max_tokens``, ``tool_choice`` -> Anthropic's form, ``parallel_tool_calls=False`` ->
    ``disable_parallel_tool_use``, ``user`` -> ``metadata.user_id``, ``n=1`` dropped. Other names
    are kept as they are (the client checks them against what the SDK takes)."""
    out = dict(options)
    stop = out.pop("stop", None)
    if stop is not None:
        if out.get("stop_sequences") is not None:
            raise PermanentFailure("pass stop= or stop_sequences=, not both")
        if not isinstance(stop, str) and not (
            isinstance(stop, Sequence) and all(isinstance(s, str) for s in stop)
        ):
            raise PermanentFailure(f"stop={repr(stop)[:80]}: expected a string or a list of strings")
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    max_completion_tokens = out.pop("max_completion_tokens", None)
    if max_completion_tokens is not None:
        if out.get("max_tokens") not in (None, max_completion_tokens):
            raise PermanentFailure("max_tokens= and max_completion_tokens= differ; pass one of them")
        out["max_tokens"] = max_completion_tokens
    if out.get("tool_choice") is not None:
        out["tool_choice"] = tool_choice_to_anthropic(out["tool_choice"])
    if out.pop("parallel_tool_calls", None) is False and has_tools:
        choice = out.get("tool_choice") or {"type": "auto"}
        if choice["type"] != "none":
            out["tool_choice"] = {**choice, "disable_parallel_tool_use": True}
    user = out.pop("user", None)
    if user is not None:
        out["metadata"] = {**(out.get("metadata") or {}), "user_id": str(user)}
    if "n" in out and out["n"] in (None, 1):
        del out["n"]
    return out


def tool_choice_to_anthropic(choice: Any) -> dict[str, Any]:
    """``"auto"`` / ``"required"`` / ``"none"`` / ``{"type": "function", "function": {"name": n}}``
    -> ``{"type": "auto" | "any" | "none"}`` / ``{"type": "tool", "name": n}``; Anthropic's own
    form passes through."""
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        return {"type": TOOL_CHOICES[choice]}
    if isinstance(choice, Mapping):
        if choice.get("type") in ANTHROPIC_TOOL_CHOICES:
            return dict(choice)
        function = choice.get("function") if choice.get("type") == "function" else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if isinstance(name, str) and name:
            return {"type": "tool", "name": name}
    raise PermanentFailure(
        f"tool_choice={repr(choice)[:80]} has no Anthropic equivalent; use 'auto', 'required', "
        "'none' or {'type': 'function', 'function': {'name': ...}}"
    )


def usage_from_anthropic(raw: Mapping[str, Any]) -> Usage:
    return Usage.of(int(raw.get("input_tokens") or 0), int(raw.get("output_tokens") or 0))


def response_from_anthropic(raw: Mapping[str, Any], model: str) -> LLMResponse:
    """A ``Message`` (as a dict) -> ``LLMResponse``."""
    [message] = from_anthropic(None, [{"role": "assistant", "content": raw.get("content") or []}])
    calls = tuple(ToolCall.from_openai(c) for c in message.get("tool_calls") or ())
    return LLMResponse(
        message=message,
        tool_calls=calls,
        usage=usage_from_anthropic(raw.get("usage") or {}),
        finish_reason=FINISH_REASONS.get(str(raw.get("stop_reason")), raw.get("stop_reason")),
        model=str(raw.get("model") or model),
    )


class StreamAssembler:
    """Raw stream events (as dicts) -> ``LLMChunk``s. ``tool_use`` input arrives as JSON fragments
    (``input_json_delta``) and is yielded whole at ``content_block_stop``."""

    def __init__(self) -> None:
        self._input_tokens = 0
        self._tool: dict[str, str] | None = None

    def feed(self, event: Mapping[str, Any]) -> list[LLMChunk]:
        kind = event.get("type")
        if kind == "message_start":
            self._input_tokens = int(
                ((event.get("message") or {}).get("usage") or {}).get("input_tokens") or 0
            )
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                self._tool = {"id": block.get("id", ""), "name": block.get("name", ""), "json": ""}
            elif block.get("type") == "text" and block.get("text"):
                return [LLMChunk(delta=block["text"])]
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [LLMChunk(delta=delta["text"])]
            if delta.get("type") == "input_json_delta" and self._tool is not None:
                self._tool["json"] += delta.get("partial_json") or ""
        elif kind == "content_block_stop" and self._tool is not None:
            tool, self._tool = self._tool, None
            return [LLMChunk(tool_calls=(ToolCall(tool["id"], tool["name"], tool["json"] or "{}"),))]
        elif kind == "message_delta":
            stop = (event.get("delta") or {}).get("stop_reason")
            output_tokens = int((event.get("usage") or {}).get("output_tokens") or 0)
            return [
                LLMChunk(
                    finish_reason=FINISH_REASONS.get(str(stop), stop) if stop else None,
                    usage=Usage.of(self._input_tokens, output_tokens),
                )
            ]
        return []


def _append_user_blocks(out: list[dict[str, Any]], blocks: list[dict[str, Any]]) -> None:
    last = out[-1] if out else None
    if last is not None and last["role"] == "user" and isinstance(last["content"], list):
        last["content"].extend(blocks)
    elif last is not None and last["role"] == "user":
        last["content"] = [{"type": "text", "text": last["content"]}, *blocks]
    else:
        out.append({"role": "user", "content": blocks})


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for index, part in enumerate(content or ()):
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            blocks.append(image_to_anthropic(part, f"{where}, content part {index}"))
        else:
            blocks.append(dict(part))  # Anthropic's own blocks (image, document, ...) pass through
    return blocks


def image_to_anthropic(part: Mapping[str, Any], where: str = "image_url part") -> dict[str, Any]:
    """An OpenAI ``image_url`` part -> an Anthropic ``image`` block: a ``data:image/...;base64,``
    URL as base64 data, an http(s) URL as a url (``detail`` has no equivalent and is dropped)."""
    raw = part.get("image_url")
    url = raw.get("url") if isinstance(raw, Mapping) else raw
    if not isinstance(url, str) or not url:
        raise PermanentFailure(f"{where} (image_url): no url; expected {{'image_url': {{'url': ...}}}}")
    if url[:8].lower().startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    if url[:5].lower() == "data:":
        header, _, data = url[5:].partition(",")
        media_type, *params = (p.strip().lower() for p in header.split(";"))
        kind, _, subtype = media_type.partition("/")
        if kind == "image" and subtype and params and params[-1] == "base64" and data:
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        raise PermanentFailure(
            f"{where} (image_url): malformed data URL {url[:40]!r}; expected data:image/<type>;base64,<data>"
        )
    raise PermanentFailure(
        f"{where} (image_url): unsupported URL {url[:40]!r}; use an http(s) or a data: URL"
    )


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")


def _parse_args(call: ToolCall) -> Any:
    try:
        return json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        # Anthropic wants an object; keep what the model wrote so the history stays faithful.
        return {"_raw_arguments": call.arguments}

"""OpenAI-style messages <-> Anthropic Messages API, both ways, as pure functions.

- ``system`` messages -> the top-level ``system`` text (joined by blank lines);
- assistant ``tool_calls`` -> ``tool_use`` blocks (arguments parsed into ``input``);
- ``tool`` messages -> ``tool_result`` blocks in ONE user turn (consecutive results merged, as
  Anthropic requires every result of a turn to answer it together); a user text that follows
  results joins that turn after them;
- usage ``input_tokens``/``output_tokens`` -> prompt/completion/total tokens;
- stop reasons -> OpenAI finish reasons.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

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


def to_anthropic(messages: Sequence[Mapping[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """(system, messages) for ``messages.create``."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "system":
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
            if text:
                blocks.append({"type": "text", "text": text})
            for raw in message.get("tool_calls") or ():
                call = ToolCall.from_openai(raw)
                blocks.append(
                    {"type": "tool_use", "id": call.id, "name": call.name, "input": _parse_args(call)}
                )
            out.append({"role": "assistant", "content": blocks})
        elif role == "user":
            content = message.get("content")
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                _append_user_blocks(out, _user_blocks(content))
            else:
                out.append(
                    {
                        "role": "user",
                        "content": content if isinstance(content, str) else _user_blocks(content),
                    }
                )
        else:
            raise ValueError(
                f"message role {role!r} has no Anthropic equivalent; use system, user, assistant or tool"
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


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for part in content or ():
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        else:
            blocks.append(dict(part))  # images etc.: passed through for the caller to get right
    return blocks


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

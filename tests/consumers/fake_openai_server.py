"""A tiny OpenAI- (and Anthropic-) compatible HTTP/1.1 server for tests, written on asyncio streams.

It runs its own event loop in a thread on a free port of 127.0.0.1, so a test's client and the
server never share a loop (a blocked client cannot hide a server-side disconnect, and vice versa).

The ``model`` of a request picks the behaviour:

- ``rate-limited``: 429 with ``Retry-After: 7``;  ``bad-request``: 400;  ``server-error``: 500;
- ``endless``: streams a token every 5 ms until the client disconnects (recorded with its time);
- ``quota-exhausted``: OpenAI's 429 ``insufficient_quota`` (billing, not a rate limit);
- ``overloaded-midstream``: a 200 stream with one token, then an SSE ``event: error`` of type
  ``overloaded_error`` (Anthropic's SDK raises an ``APIStatusError`` with status 200; OpenAI's
  an ``APIError`` without one);
- ``same-index-tools`` (OpenAI path): the scripted reply's tool calls streamed whole, each at
  ``index`` 0 with its own ``id``, as Gemini's OpenAI-compatible endpoint sends parallel calls;
- anything else: the next scripted ``Reply`` (``server.replies``), else a fixed greeting, streamed
  (SSE, usage in the last chunk when ``stream_options.include_usage``) or as one JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

GREETING = "Hello from the local server."


@dataclass(frozen=True, slots=True)
class Reply:
    content: str = ""
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()  # (name, arguments)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeOpenAIServer:
    replies: list[Reply] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    disconnected_at: list[float] = field(default_factory=list)  # time.monotonic() of each client disconnect
    streaming_started: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        ready = threading.Event()

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await self._stop.wait()
            # asyncio.run() then cancels the connection handlers still streaming

        self._thread = threading.Thread(
            target=asyncio.run, args=(serve(),), name="fake-openai-server", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake OpenAI server did not start within 10 s")

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    # -- HTTP ----------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                _method, path, _version = request_line.split(" ", 2)
                headers = {}
                for line in header_lines:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                body_bytes = await reader.readexactly(int(headers.get("content-length", "0")))
                body = json.loads(body_bytes or b"{}")
                self.requests.append(Recorded(path, headers, body))
                keep_open = await self._respond(path, body, reader, writer)
                if not keep_open:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(
        self, path: str, body: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        model = str(body.get("model", ""))
        if model == "rate-limited":
            return await _json(
                writer, 429, _error("Rate limit reached", "rate_limit_exceeded"), {"Retry-After": "7"}
            )
        if model == "bad-request":
            return await _json(
                writer, 400, _error("Invalid 'messages': unknown role 'robot'", "invalid_request")
            )
        if model == "server-error":
            return await _json(writer, 500, _error("The server had an error", "server_error"))
        if model == "quota-exhausted":
            return await _json(writer, 429, _quota_error())
        anthropic = path.endswith("/messages")
        if model == "overloaded-midstream":  # a 200 stream that an SSE error event breaks
            await self._stream(writer, reader, iter(_overloaded_midstream_sse(anthropic)))
            return False
        if model == "same-index-tools" and not anthropic:  # Gemini: parallel calls all at index 0
            reply = self.replies.pop(0) if self.replies else Reply(GREETING)
            await self._stream(writer, reader, iter(_same_index_tool_calls_sse(reply, model)))
            return False
        if model == "endless":
            await self._stream(writer, reader, _endless_sse(anthropic))
            return False
        reply = self.replies.pop(0) if self.replies else Reply(GREETING)
        if anthropic:
            if body.get("stream"):
                await self._stream(writer, reader, iter(_anthropic_sse(reply, model)))
                return False
            return await _json(writer, 200, _anthropic_message(reply, model))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            await self._stream(writer, reader, iter(_openai_sse(reply, model, include_usage)))
            return False
        return await _json(writer, 200, _openai_completion(reply, model))

    async def _stream(
        self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader, events: Iterator[bytes]
    ) -> None:
        """SSE with ``Connection: close``; a read that returns EOF is the client going away."""
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"connection: close\r\n\r\n"
        )
        await writer.drain()
        self.streaming_started.set()
        eof = asyncio.ensure_future(reader.read(1))
        eof.add_done_callback(self._on_eof)
        try:
            for event in events:
                if eof.done():
                    break
                writer.write(event)
                await writer.drain()
                if event.startswith(b": pace"):
                    await asyncio.wait({eof}, timeout=0.005)
        except ConnectionError:
            # the write met the reset before the read saw EOF (a loaded machine): the same going
            # away, and the read is cancelled below before its callback could say so
            if not eof.done():
                self._went_away()
        finally:
            eof.cancel()

    def _on_eof(self, eof: asyncio.Future[bytes]) -> None:
        """The client closed its end (or reset it) while we were still streaming."""
        if eof.cancelled():
            return
        if eof.exception() is None and eof.result():
            return  # the client sent bytes, not a close; does not happen with HTTP/1.1 clients
        self._went_away()

    def _went_away(self) -> None:
        self.disconnected_at.append(time.monotonic())
        self.disconnected.set()


def _endless_sse(anthropic: bool) -> Iterator[bytes]:
    if anthropic:
        yield _sse({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}, "message_start")
        yield _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    n = 0
    while True:
        n += 1
        if anthropic:
            yield _sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" t{n}"}}
            )
        else:
            yield _sse(_chunk("endless", {"content": f" t{n}"}))
        yield b": pace\n\n"  # an SSE comment: the server waits a little after it


def _openai_sse(reply: Reply, model: str, include_usage: bool) -> list[bytes]:
    out = [_sse(_chunk(model, {"role": "assistant", "content": ""}))]
    words = _words(reply.content)
    out += [_sse(_chunk(model, {"content": word})) for word in words]
    for index, (name, arguments) in enumerate(reply.tool_calls):
        text = json.dumps(arguments)
        first = {
            "index": index,
            "id": f"call_{index}",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        out.append(_sse(_chunk(model, {"tool_calls": [first]})))
        for start in range(0, len(text), 4):  # arguments arrive in fragments, as from the real API
            fragment = {"index": index, "function": {"arguments": text[start : start + 4]}}
            out.append(_sse(_chunk(model, {"tool_calls": [fragment]})))
    out.append(_sse(_chunk(model, {}, "tool_calls" if reply.tool_calls else "stop")))
    if include_usage:
        usage = {
            "prompt_tokens": 11,
            "completion_tokens": len(words) + len(reply.tool_calls),
            "total_tokens": 0,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        out.append(
            _sse(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        )
    out.append(b"data: [DONE]\n\n")
    return out


def _openai_completion(reply: Reply, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, (n, a) in enumerate(reply.tool_calls)
        ]
    completion_tokens = len(_words(reply.content)) + len(reply.tool_calls)
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if reply.tool_calls else "stop"}
        ],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": completion_tokens,
            "total_tokens": 11 + completion_tokens,
        },
    }


def _anthropic_message(reply: Reply, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": reply.content}] if reply.content else []
    content += [
        {"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": a}
        for i, (n, a) in enumerate(reply.tool_calls)
    ]
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 13, "output_tokens": len(_words(reply.content)) + len(reply.tool_calls)},
    }


def _anthropic_sse(reply: Reply, model: str) -> list[bytes]:
    message = {**_anthropic_message(Reply(), model), "content": [], "stop_reason": None}
    message["usage"] = {"input_tokens": 13, "output_tokens": 0}
    out = [_sse({"type": "message_start", "message": message}, "message_start")]
    index = 0
    if reply.content:
        out.append(
            _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        )
        for word in _words(reply.content):
            out.append(
                _sse(
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}
                )
            )
        out.append(_sse({"type": "content_block_stop", "index": 0}))
        index = 1
    for i, (name, arguments) in enumerate(reply.tool_calls, start=index):
        block = {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}}
        out.append(_sse({"type": "content_block_start", "index": i, "content_block": block}))
        text = json.dumps(arguments)
        for start in range(0, len(text), 5):
            delta = {"type": "input_json_delta", "partial_json": text[start : start + 5]}
            out.append(_sse({"type": "content_block_delta", "index": i, "delta": delta}))
        out.append(_sse({"type": "content_block_stop", "index": i}))
    output_tokens = len(_words(reply.content)) + len(reply.tool_calls)
    stop = "tool_use" if reply.tool_calls else "end_turn"
    out.append(
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            }
        )
    )
    out.append(_sse({"type": "message_stop"}))
    return out


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    name = event or str(data.get("type") or "")
    prefix = f"event: {name}\n" if name and "type" in data else ""
    return f"{prefix}data: {json.dumps(data)}\n\n".encode()


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else f" {w}" for i, w in enumerate(words)] if text else []


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


async def _json(
    writer: asyncio.StreamWriter, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> bool:
    payload = json.dumps(body).encode()
    reasons = {200: "OK", 400: "Bad Request", 429: "Too Many Requests", 500: "Internal Server Error"}
    head = f"HTTP/1.1 {status} {reasons[status]}\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n"
    for key, value in (headers or {}).items():
        head += f"{key}: {value}\r\n"
    writer.write(head.encode() + b"\r\n" + payload)
    await writer.drain()
    return True


def _quota_error() -> dict[str, Any]:
    message = "You exceeded your current quota, please check your plan and billing details."
    return {
        "error": {
            "message": message,
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }


def _overloaded_midstream_sse(anthropic: bool) -> list[bytes]:
    if anthropic:
        out = _anthropic_sse(Reply(GREETING), "overloaded-midstream")[:3]  # start, block start, a token
    else:
        out = _openai_sse(Reply(GREETING), "overloaded-midstream", False)[:2]  # role, a token
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    out.append(f"event: error\ndata: {json.dumps(error)}\n\n".encode())
    return out


def _same_index_tool_calls_sse(reply: Reply, model: str) -> list[bytes]:
    out = [_sse(_chunk(model, {"role": "assistant", "content": ""}))]
    for number, (name, arguments) in enumerate(reply.tool_calls):
        call = {
            "index": 0,
            "id": f"call_{number}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
        out.append(_sse(_chunk(model, {"tool_calls": [call]})))
    out.append(_sse(_chunk(model, {}, "tool_calls" if reply.tool_calls else "stop")))
    out.append(b"data: [DONE]\n\n")
    return out

"""SSE framing, sans I/O: bytes in the ``text/event-stream`` format and nothing else."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from agentstream.core.events import TERMINAL_TYPES, Event, Visibility

KEEPALIVE = b": keepalive\n\n"


def encode_sse(id: int | str | None, event: str | None, data: Mapping[str, Any] | str) -> bytes:
    """One SSE frame. ``data`` is JSON-encoded unless it is already text; never a raw newline
    inside a field (a newline would end it early), so text data is split into ``data:`` lines."""
    parts: list[bytes] = []
    if id is not None:
        parts.append(b"id: " + _one_line(str(id)) + b"\n")
    if event:
        parts.append(b"event: " + _one_line(event) + b"\n")
    if isinstance(data, str):
        for line in data.splitlines() or [""]:
            parts.append(b"data: " + line.encode() + b"\n")
    else:
        parts.append(b"data: " + orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS) + b"\n")
    parts.append(b"\n")
    return b"".join(parts)


def retry_frame(retry_ms: int) -> bytes:
    return b"retry: %d\n\n" % retry_ms


def _one_line(value: str) -> bytes:
    return value.replace("\r", " ").replace("\n", " ").encode()


def iso_ts(ts_ms: int) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")


def ui_visible(event_type: str, visibility: Visibility) -> bool:
    """Meant for an end user's screen (the seed's flag): user-level events and every terminal one."""
    return visibility is Visibility.USER or event_type in TERMINAL_TYPES


def event_data(event: Event) -> dict[str, Any]:
    """The ``data:`` of an event frame, in the seed's shape."""
    return {
        "run_id": event.run_id,
        "seq": event.seq,
        "type": event.type,
        "payload": event.payload,
        "ts": iso_ts(event.ts_ms),
        "visibility_level": event.visibility.value,
        "ui_visible": ui_visible(event.type, event.visibility),
    }


def event_frame(event: Event) -> bytes:
    data = event_data(event)
    try:
        return encode_sse(event.seq, event.type, data)
    except orjson.JSONEncodeError as exc:  # nested past JSON's 255 levels (msgpack takes 1,024)
        return encode_sse(event.seq, event.type, {**data, "payload": not_json(exc)})


def not_json(exc: Exception) -> dict[str, str]:
    """What is sent in place of a value JSON cannot hold (the projections store the same key)."""
    return {"not_json": f"cannot be sent as JSON: {exc}"}


def sendable(value: Any) -> Any:
    """``value`` if JSON can hold it (str or int keys, 255 levels: msgpack takes tuple keys and
    1,024), else the ``not_json`` note, so that one odd value is no 500 of a whole response."""
    try:
        orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:
        return not_json(exc)
    return value


@dataclass(frozen=True, slots=True)
class Frame:
    """An event and its encoded frame: encoded once, shared by every client of the run."""

    event: Event
    data: bytes

    @classmethod
    def of(cls, event: Event) -> Frame:
        return cls(event, event_frame(event))


@dataclass(frozen=True, slots=True)
class VisibilityFilter:
    """Which events a client sees: user-level by default, debug with ``include_debug`` (or
    DEBUG_MODE), everything with ``include_all``; terminal events always."""

    include_debug: bool = False
    include_all: bool = False

    def wants(self, event: Event) -> bool:
        if self.include_all or event.visibility is Visibility.USER or event.type in TERMINAL_TYPES:
            return True
        return self.include_debug and event.visibility is Visibility.DEBUG

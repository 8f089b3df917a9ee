"""Stream entries <-> ``Event`` envelopes; payloads in msgpack (DESIGN §4).

An entry's fields (short names: they are stored once per event, millions of times)::

    r   run id ("" for a conversation event)      s   seq
    t   event type                                p   payload, msgpack
    ts  unix time, ms                             a   attempt
    vis visibility                                v   schema version
    c   conversation id ("" when none)

A run's own stream leaves out ``r`` (its key names the run; readers pass the run id), which for
a run streaming tokens is a third of its memory; the partition log, which mixes runs, keeps it.
The Lua scripts write ``s``, ``ts`` and ``a`` themselves; Python encodes the payload. Old
schema versions are upcast on read, one function per version step, never rewritten.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from agentstream.core.errors import CorruptEntry, EventEncodingError
from agentstream.core.events import SCHEMA_VERSION, Event, Visibility

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
# msgpack's packer refuses deeper lists and maps ("recursion limit exceeded")
MAX_NESTING = 1024

# version n -> function taking (type, payload) of version n and returning those of n + 1.
Upcaster = Callable[[str, dict[str, Any]], tuple[str, dict[str, Any]]]
UPCASTERS: dict[int, Upcaster] = {}


def as_text(value: Any) -> str:
    """A Redis reply value as text (redis-py hands bytes unless asked to decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _default(value: object) -> object:
    """Values that have one obvious wire form; everything else is refused."""
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, int):  # msgpack hands over only the ints it cannot hold
        raise OverflowError("an integer outside -2**63 .. 2**64-1; send a larger one as a string")
    raise TypeError(f"cannot encode {type(value).__name__}")


# The same values written as JSON (orjson's ``default``): what a copy kept beside an event holds.
json_default = _default


class PackedPayload(dict[str, Any]):
    """A payload (a shallow copy, taken when it was packed) with its msgpack bytes, so that it
    is encoded once: a worker's ``RunContext.emit`` encodes it (to refuse a bad one at once), and
    the store's write later gets these bytes back from ``encode_payload`` instead of encoding it
    again. A plain dict to everything else: any other encoder writes the same thing."""

    __slots__ = ("data",)

    def __init__(self, payload: Mapping[str, Any], data: bytes) -> None:
        super().__init__(payload)
        self.data = data


def pack_payload(
    event_type: str, payload: Mapping[str, Any], max_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> PackedPayload:
    """``payload`` with its bytes (``encode_payload``'s errors if it cannot be written)."""
    return PackedPayload(payload, encode_payload(event_type, payload, max_bytes))


def encode_payload(
    event_type: str, payload: Mapping[str, Any], max_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> bytes:
    """msgpack bytes of a payload, or ``EventEncodingError`` naming the type and the bad key."""
    cls = type(payload)
    if cls is PackedPayload:
        data: bytes = payload.data  # type: ignore[attr-defined]  # (type() is exact: mypy cannot narrow)
    else:
        if cls is not dict and not isinstance(payload, Mapping):
            raise EventEncodingError(f"{event_type}: payload must be a dict, got {cls.__name__}")
        try:
            data = msgpack.packb(payload, default=_default, use_bin_type=True, strict_types=False)
        except (TypeError, ValueError, OverflowError) as exc:
            if "recursion limit" in str(exc):
                raise EventEncodingError(
                    f"{event_type}: payload is nested more than {MAX_NESTING} levels deep; flatten it"
                ) from None
            try:
                where = _find_unencodable(payload, "payload") or "payload"
            except RecursionError:  # a bad value nested almost as deep as msgpack allows
                where = "payload"
            raise EventEncodingError(
                f"{event_type}: {where} cannot be encoded ({exc}); use JSON-like values "
                "(str, int, float, bool, None, list, dict)"
            ) from None
    if len(data) > max_bytes:
        raise EventEncodingError(
            f"{event_type}: payload is {len(data)} bytes, over MAX_EVENT_BYTES={max_bytes}; "
            "store large data elsewhere and emit a reference"
        )
    return data


def _find_unencodable(value: object, path: str) -> str | None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                return f"{path} key {key!r}"
            found = _find_unencodable(item, f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find_unencodable(item, f"{path}[{index}]")
            if found:
                return found
        return None
    try:
        msgpack.packb(value, default=_default, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return f"{path} ({type(value).__name__})"
    return None


def decode_payload(data: bytes) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except TypeError:  # unhashable type: a map key that was a tuple (packed as an array)
        value = _lists(msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=False))
    if not isinstance(value, dict):
        raise CorruptEntry(f"payload is a {type(value).__name__}, not a map")
    return value


def _lists(value: Any) -> Any:
    """A value decoded with arrays as tuples, with its arrays as lists again but where a map key
    (a tuple there, as the encoder was given): the slow path for payloads with such keys."""
    if isinstance(value, tuple):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def decode_entry(fields: Mapping[bytes, bytes], run_id: str = "") -> Event:
    """An ``Event`` from a stream entry's fields; ``CorruptEntry`` when they do not decode."""
    try:
        version = int(fields.get(b"v", b"1"))
        event_type = fields[b"t"].decode()
        payload = decode_payload(fields[b"p"]) if b"p" in fields else {}
        while version < SCHEMA_VERSION:
            event_type, payload = UPCASTERS[version](event_type, payload)
            version += 1
        return Event(
            run_id=fields[b"r"].decode() if b"r" in fields else run_id,
            seq=int(fields[b"s"]),
            type=event_type,
            payload=payload,
            ts_ms=int(fields.get(b"ts", b"0")),
            attempt=int(fields.get(b"a", b"0")),
            visibility=Visibility(fields.get(b"vis", b"user").decode()),
            v=version,
            conversation_id=fields.get(b"c", b"").decode(),
        )
    except CorruptEntry:
        raise
    except Exception as exc:  # anything a hand-written entry can make go wrong
        raise CorruptEntry(f"stream entry does not decode: {type(exc).__name__}: {exc}") from None

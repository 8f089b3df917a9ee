"""Log entries -> events, refusing what no projection can use (garbage written by hand).

The projector decodes every entry of every log, so this is ``core.codec.decode_entry`` with the
common case (current schema version) inlined; older versions go through core's upcasters.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentstream.core.codec import decode_entry, decode_payload
from agentstream.core.errors import CorruptEntry
from agentstream.core.events import SCHEMA_VERSION, Event, Visibility, event_of
from agentstream.core.ids import is_valid_id

_VISIBILITY = {v.value.encode(): v for v in Visibility}
_CURRENT = str(SCHEMA_VERSION).encode()
_CACHE_MAX = 200_000
# raw id -> its checked str, raw type -> str: a batch names each run many times and has few types,
# so each is decoded (and an id validated) once, not per entry
_ids: dict[bytes, str] = {}
_types: dict[bytes, str] = {}


def _checked_id(raw: bytes, what: str) -> str:
    value = _ids.get(raw)
    if value is not None:
        return value
    value = raw.decode()
    if not is_valid_id(value):
        raise CorruptEntry(f"{what} {value!r} is not a uuid")
    if len(_ids) > _CACHE_MAX:
        _ids.clear()
    _ids[raw] = value
    return value


def _type(raw: bytes) -> str:
    value = _types.get(raw)
    if value is None:
        value = raw.decode()
        if len(_types) > _CACHE_MAX:
            _types.clear()
        _types[raw] = value
    return value


def decode_log_entry(fields: Mapping[bytes, bytes]) -> Event:
    """The entry's event; ``CorruptEntry`` when it does not decode or names no valid run or conversation."""
    if fields.get(b"v", _CURRENT) != _CURRENT:
        return _checked(decode_entry(fields))
    try:
        raw = fields.get(b"p")
        payload = decode_payload(raw) if raw is not None else {}
        seq = int(fields[b"s"])
        event_type = _type(fields[b"t"])
        ts_ms = int(fields.get(b"ts", b"0"))
        attempt = int(fields.get(b"a", b"0"))
        visibility = _VISIBILITY[fields.get(b"vis", b"user")]
        raw_run, raw_conversation = fields.get(b"r", b""), fields.get(b"c", b"")
        if raw_run:
            run_id, conversation_id = _checked_id(raw_run, "run id"), raw_conversation.decode()
        elif raw_conversation:
            run_id, conversation_id = "", _checked_id(raw_conversation, "conversation id")
        else:
            raise CorruptEntry(f"entry has neither a run id nor a conversation id ({event_type})")
    except CorruptEntry:
        raise
    except Exception as exc:  # anything a hand-written entry can make go wrong
        raise CorruptEntry(f"stream entry does not decode: {type(exc).__name__}: {exc}") from None
    return event_of(
        run_id, seq, event_type, payload, ts_ms, attempt, visibility, SCHEMA_VERSION, conversation_id
    )


def _checked(event: Event) -> Event:
    """An upcast event of an older schema, held to the same id rules."""
    if event.run_id:
        _checked_id(event.run_id.encode(), "run id")
    elif event.conversation_id:
        _checked_id(event.conversation_id.encode(), "conversation id")
    else:
        raise CorruptEntry(f"entry has neither a run id nor a conversation id ({event.type})")
    return event

"""Log entries -> events, refusing what no projection can use (garbage written by hand).

The projector decodes every entry of every log, so this is ``core.codec.decode_entry`` with the
common case (current schema version) inlined; older versions go through core's upcasters.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgpack

from agentstream.core.codec import decode_entry
from agentstream.core.errors import CorruptEntry
from agentstream.core.events import SCHEMA_VERSION, Event, Visibility
from agentstream.core.ids import is_valid_id

_VISIBILITY = {v.value.encode(): v for v in Visibility}
_CURRENT = str(SCHEMA_VERSION).encode()
_valid_ids: set[str] = set()  # ids already checked (a batch names each run many times)


def _check_id(value: str, what: str) -> None:
    if value in _valid_ids:
        return
    if not is_valid_id(value):
        raise CorruptEntry(f"{what} {value!r} is not a uuid")
    if len(_valid_ids) > 200_000:
        _valid_ids.clear()
    _valid_ids.add(value)


def decode_log_entry(fields: Mapping[bytes, bytes]) -> Event:
    """The entry's event; ``CorruptEntry`` when it does not decode or names no valid run or conversation."""
    if fields.get(b"v", _CURRENT) != _CURRENT:
        event = decode_entry(fields)
    else:
        try:
            raw = fields.get(b"p")
            payload = msgpack.unpackb(raw, raw=False, strict_map_key=False) if raw is not None else {}
            if not isinstance(payload, dict):
                raise CorruptEntry(f"payload is a {type(payload).__name__}, not a map")
            event = Event(
                run_id=fields[b"r"].decode() if b"r" in fields else "",
                seq=int(fields[b"s"]),
                type=fields[b"t"].decode(),
                payload=payload,
                ts_ms=int(fields.get(b"ts", b"0")),
                attempt=int(fields.get(b"a", b"0")),
                visibility=_VISIBILITY[fields.get(b"vis", b"user")],
                v=SCHEMA_VERSION,
                conversation_id=fields.get(b"c", b"").decode(),
            )
        except CorruptEntry:
            raise
        except Exception as exc:  # anything a hand-written entry can make go wrong
            raise CorruptEntry(f"stream entry does not decode: {type(exc).__name__}: {exc}") from None
    if event.run_id:
        _check_id(event.run_id, "run id")
    elif event.conversation_id:
        _check_id(event.conversation_id, "conversation id")
    else:
        raise CorruptEntry(f"entry has neither a run id nor a conversation id ({event.type})")
    return event

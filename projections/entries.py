"""Log entries -> events, refusing what no projection can use (garbage written by hand)."""

from __future__ import annotations

from collections.abc import Mapping

from agentstream.core.codec import decode_entry
from agentstream.core.errors import CorruptEntry
from agentstream.core.events import Event
from agentstream.core.ids import is_valid_id


def decode_log_entry(fields: Mapping[bytes, bytes]) -> Event:
    """The entry's event; ``CorruptEntry`` when it does not decode or names no valid run or conversation."""
    event = decode_entry(fields)
    if event.run_id and not is_valid_id(event.run_id):
        raise CorruptEntry(f"run id {event.run_id!r} is not a uuid")
    if not event.run_id and not is_valid_id(event.conversation_id):
        raise CorruptEntry(f"entry has neither a run id nor a conversation id ({event.type})")
    return event

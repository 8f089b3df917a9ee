"""Redis reads the API makes, each ONE round trip (a pipeline)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agentstream.core.codec import as_text, decode_entry
from agentstream.core.errors import CorruptEntry
from agentstream.core.events import TERMINAL_TYPES, Event
from agentstream.core.state import RunState
from agentstream.core.store import EventStore, _state_from_hash


async def run_snapshot(store: EventStore, run_id: str) -> tuple[RunState | None, Event | None]:
    """The run's Redis state and its first event (``run.queued``: the input), together. An ended
    run's state carries the output, error and usage of its last event (read then, one call more
    for ended runs only), so a read the projector has not caught up with shows how it ended."""
    stream = store.keys.run_stream(run_id)
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(store.keys.run_state(run_id))
        pipe.xrange(stream, min="0-1", count=1)
        raw, first = await pipe.execute()
    state = _state_from_hash(run_id, raw) if raw else None
    queued = _decoded(first, run_id)
    if state is not None and state.status.is_terminal:
        ended = _decoded(await store.redis.xrevrange(stream, count=1), run_id)
        if ended is not None and ended.type in TERMINAL_TYPES:  # nothing follows a terminal event
            p = ended.payload
            state = replace(
                state, output=p.get("output"), error=p.get("error"), usage=dict(p.get("usage") or {})
            )
    return state, queued


def _decoded(entries: list[Any], run_id: str) -> Event | None:
    """The one entry's event; None for none, or one that does not decode (read_run logs those)."""
    if not entries:
        return None
    try:
        return decode_entry(entries[0][1], run_id)
    except CorruptEntry:
        return None


async def conversation_snapshot(store: EventStore, conversation_id: str) -> dict[str, str] | None:
    raw: dict[Any, Any] = await store.redis.hgetall(store.keys.conversation(conversation_id))
    if not raw:
        return None
    return {as_text(k): as_text(v) for k, v in raw.items()}


async def conversation_deleted(store: EventStore, conversation_id: str) -> bool:
    """Whether the conversation's Redis state says it was deleted (its runs go with it)."""
    deleted = await store.redis.hget(store.keys.conversation(conversation_id), "deleted")
    return as_text(deleted or b"") == "1"

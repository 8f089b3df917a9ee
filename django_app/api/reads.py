"""Reads: the read-models, filtered by owner, with read-your-writes from Redis (DESIGN §8).

A run's row may lag its Redis state (just created; the projector is behind). When the state is
ahead (no row, or ``row.last_seq < state.seq``) the answer comes from the state, and the input
from the run's first event (``run.queued``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from agentstream.core.events import Event as StreamEvent
from agentstream.core.state import RunState
from agentstream.django_app.api.backend import StoreThread
from agentstream.django_app.api.snapshots import conversation_deleted
from agentstream.django_app.models import Conversation, Event, Run
from agentstream.django_app.sse.framing import iso_ts, sendable


def _ms(ms: int) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC) if ms else None


def run_from_row(row: Run) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "conversation_id": str(row.conversation_id) if row.conversation_id else None,
        "agent_key": row.agent_key,
        "status": row.status,
        "input": row.input or {},
        "output": row.output,
        "error": row.error,
        "usage": row.usage or {},
        "attempt": row.attempt,
        "max_attempts": row.max_attempts,
        "idempotency_key": row.idempotency_key,
        "metadata": row.metadata or {},
        "cancel_requested_at": row.cancel_requested_at,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
    }


def run_from_state(state: RunState, queued: StreamEvent | None, row: Run | None) -> dict[str, Any]:
    """The run as Redis knows it (the row, when there is one, fills what the state lacks)."""
    base = run_from_row(row) if row is not None else {}
    p = dict(queued.payload) if queued is not None and queued.type == "run.queued" else {}
    return {
        **base,
        "id": state.run_id,
        "conversation_id": state.conversation_id or None,
        "agent_key": state.agent_key,
        "status": state.status.value,
        "input": base.get("input") or {"messages": p.get("messages", []), "params": p.get("params", {})},
        # an agent's values, not yet through the projector's JSON
        "output": sendable(state.output) if state.output is not None else base.get("output"),
        "error": sendable(state.error) if state.error is not None else base.get("error"),
        "usage": sendable(state.usage) if state.usage else base.get("usage") or {},
        "attempt": state.attempt,
        "max_attempts": state.max_attempts,
        "idempotency_key": p.get("idempotency_key", base.get("idempotency_key")),
        "metadata": base.get("metadata") or p.get("metadata", {}),
        "cancel_requested_at": base.get("cancel_requested_at"),
        "created_at": _ms(state.created_ms),
        "started_at": _ms(state.started_ms),
        "finished_at": _ms(state.finished_ms),
    }


def in_deleted_conversation(backend: StoreThread, state: RunState | None, row: Run | None) -> bool:
    """Whether the run's conversation was deleted (its runs go with it): the row's conversation
    (``select_related``) says so, or, with no row to ask, the conversation's Redis state."""
    if row is not None:
        return row.conversation is not None and row.conversation.deleted_at is not None
    if state is None or not state.conversation_id:
        return False
    store, conversation_id = backend.store, state.conversation_id
    return backend.call(lambda: conversation_deleted(store, conversation_id))


def state_is_ahead(state: RunState | None, row: Run | None) -> bool:
    return state is not None and (row is None or row.last_seq < state.seq)


def conversation_from_row(row: Conversation) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "agent_key": row.agent_key,
        "title": row.title,
        "metadata": row.metadata or {},
        "run_count": row.run_count,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "last_activity_at": row.last_activity_at,
    }


def conversation_read(
    conversation_id: str, row: Conversation | None, state: dict[str, str] | None
) -> dict[str, Any]:
    """The conversation as written: its row, and where the projector has not applied its
    latest events yet (no row, or ``last_seq`` behind the state's ``seq``), the title, metadata
    and times its Redis state keeps (``conversation.lua``). Hashes written before the state kept
    them (no ``title`` / ``meta`` / ``updated``) fall back to the row."""
    body = conversation_from_row(row) if row is not None else None
    if state is None or (row is not None and row.last_seq >= int(state.get("seq") or 0)):
        assert body is not None, "neither a row nor a state"
        return body
    if body is None:
        created = _ms(int(state.get("created") or 0))
        body = {
            "id": conversation_id,
            "agent_key": state.get("agent", ""),
            "title": "",
            "metadata": {},
            "run_count": 0,
            "created_at": created,
            "updated_at": created,
            "last_activity_at": created,
        }
    if "title" in state:
        body["title"] = state["title"]
    if "meta" in state:
        body["metadata"] = orjson.loads(state["meta"])
    if state.get("updated"):
        body["updated_at"] = _ms(int(state["updated"]))
    return body


def archived_event_data(row: Event) -> dict[str, Any]:
    """An archived event in the SSE ``data`` shape (the same fields the stream sends)."""
    from agentstream.core.events import Visibility
    from agentstream.django_app.sse.framing import ui_visible

    return {
        "run_id": str(row.run_id),
        "seq": row.seq,
        "type": row.type,
        "payload": row.payload,
        "ts": iso_ts(int(row.ts.timestamp() * 1000)),
        "visibility_level": row.visibility,
        "ui_visible": ui_visible(row.type, Visibility(row.visibility)),
    }


def archived_as_stream_event(row: Event) -> StreamEvent:
    from agentstream.core.events import Visibility

    return StreamEvent(
        run_id=str(row.run_id),
        seq=row.seq,
        type=row.type,
        payload=row.payload or {},
        ts_ms=int(row.ts.timestamp() * 1000),
        attempt=row.attempt,
        visibility=Visibility(row.visibility),
        conversation_id=str(row.conversation_id or ""),
    )


def message_history(conversation: Conversation) -> list[dict[str, Any]]:
    """The conversation's chat messages, oldest first (the projections' history when present)."""
    try:
        return conversation.get_message_history()
    except ImportError:  # projections.history not installed: the runs' inputs and final messages
        messages: list[dict[str, Any]] = []
        runs = Run.objects.filter(conversation_id=conversation.id, status="succeeded").order_by("created_at")
        for run in runs:
            messages += list((run.input or {}).get("messages") or [])
            messages += list(run.final_messages or [])
        return messages

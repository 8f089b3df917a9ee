"""Event types, visibility, and the event envelope (DESIGN §4).

Types keep the names of django-agent-runtime's ``EventType`` and add the lifecycle events an
event-sourced run needs (``run.queued``, ``run.cancel_requested``, ``run.retrying``) and the
``conversation.*`` events. Agents may also emit types of their own (any dotted string that is
not reserved for the lifecycle).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1


class EventType(StrEnum):
    # lifecycle
    RUN_QUEUED = "run.queued"
    RUN_STARTED = "run.started"
    RUN_HEARTBEAT = "run.heartbeat"
    RUN_SUCCEEDED = "run.succeeded"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    RUN_TIMED_OUT = "run.timed_out"
    RUN_CANCEL_REQUESTED = "run.cancel_requested"
    RUN_RETRYING = "run.retrying"
    # messages
    ASSISTANT_DELTA = "assistant.delta"
    ASSISTANT_MESSAGE = "assistant.message"
    # tools
    TOOL_CALL = "tool.call"
    TOOL_RESULT = "tool.result"
    # state
    STATE_CHECKPOINT = "state.checkpoint"
    ERROR = "error"
    # conversations
    CONVERSATION_CREATED = "conversation.created"
    CONVERSATION_UPDATED = "conversation.updated"
    CONVERSATION_DELETED = "conversation.deleted"
    CONVERSATION_BRANCH_SWITCHED = "conversation.branch_switched"
    # owner-scoped agent stores (core.records): written through RunContext's stores only
    MEMORY_SET = "memory.set"
    MEMORY_DELETED = "memory.deleted"
    PREFERENCE_SET = "preference.set"
    PREFERENCE_DELETED = "preference.deleted"
    TASK_UPSERTED = "task.upserted"
    TASK_DELETED = "task.deleted"
    KNOWLEDGE_ADDED = "knowledge.added"
    KNOWLEDGE_DELETED = "knowledge.deleted"


class Visibility(StrEnum):
    INTERNAL = "internal"
    DEBUG = "debug"
    USER = "user"


TERMINAL_TYPES: frozenset[str] = frozenset(
    {
        EventType.RUN_SUCCEEDED,
        EventType.RUN_FAILED,
        EventType.RUN_CANCELLED,
        EventType.RUN_TIMED_OUT,
    }
)

# Written only by their own Lua script (submit, begin_attempt, finish, cancel, ...);
# a worker's plain ``append`` of one of these is refused.
LIFECYCLE_TYPES: frozenset[str] = frozenset(
    {
        EventType.RUN_QUEUED,
        EventType.RUN_STARTED,
        EventType.RUN_CANCEL_REQUESTED,
        EventType.RUN_RETRYING,
        *TERMINAL_TYPES,
    }
)

# Go to the run stream only (the SSE path), not to the partition log, unless
# PERSIST_TOKEN_DELTAS: they are many and the read-models do not need them.
EPHEMERAL_TYPES: frozenset[str] = frozenset({EventType.ASSISTANT_DELTA, EventType.RUN_HEARTBEAT})

DEFAULT_EVENT_VISIBILITY: Mapping[str, Visibility] = {
    EventType.RUN_QUEUED: Visibility.INTERNAL,
    EventType.RUN_STARTED: Visibility.INTERNAL,
    EventType.RUN_HEARTBEAT: Visibility.INTERNAL,
    EventType.RUN_RETRYING: Visibility.DEBUG,
    EventType.RUN_CANCEL_REQUESTED: Visibility.DEBUG,
    EventType.RUN_SUCCEEDED: Visibility.USER,
    EventType.RUN_FAILED: Visibility.USER,
    EventType.RUN_CANCELLED: Visibility.USER,
    EventType.RUN_TIMED_OUT: Visibility.USER,
    EventType.ASSISTANT_DELTA: Visibility.USER,
    EventType.ASSISTANT_MESSAGE: Visibility.USER,
    EventType.TOOL_CALL: Visibility.DEBUG,
    EventType.TOOL_RESULT: Visibility.DEBUG,
    EventType.STATE_CHECKPOINT: Visibility.INTERNAL,
    EventType.ERROR: Visibility.USER,
    EventType.CONVERSATION_CREATED: Visibility.INTERNAL,
    EventType.CONVERSATION_UPDATED: Visibility.INTERNAL,
    EventType.CONVERSATION_DELETED: Visibility.INTERNAL,
    EventType.CONVERSATION_BRANCH_SWITCHED: Visibility.INTERNAL,
    EventType.MEMORY_SET: Visibility.INTERNAL,
    EventType.MEMORY_DELETED: Visibility.INTERNAL,
    EventType.PREFERENCE_SET: Visibility.INTERNAL,
    EventType.PREFERENCE_DELETED: Visibility.INTERNAL,
    EventType.TASK_UPSERTED: Visibility.DEBUG,
    EventType.TASK_DELETED: Visibility.DEBUG,
    EventType.KNOWLEDGE_ADDED: Visibility.INTERNAL,
    EventType.KNOWLEDGE_DELETED: Visibility.INTERNAL,
}


def visibility_of(event_type: str, overrides: Mapping[str, str] | None = None) -> Visibility:
    """The configured visibility of a type; types nobody configured are user-visible."""
    if overrides and event_type in overrides:
        return Visibility(overrides[event_type])
    return DEFAULT_EVENT_VISIBILITY.get(event_type, Visibility.USER)


def is_ui_visible(event_type: str, visibility: Visibility, *, debug: bool) -> bool:
    """Whether a client sees the event by default; terminal events always reach it."""
    if event_type in TERMINAL_TYPES:
        return True
    if visibility is Visibility.USER:
        return True
    return visibility is Visibility.DEBUG and debug


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a run (or, with an empty ``run_id``, of a conversation).

    ``seq`` is dense per run (1, 2, 3, ...) and assigned by the store, never by the writer.
    """

    run_id: str
    seq: int
    type: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    ts_ms: int = 0
    attempt: int = 0
    visibility: Visibility = Visibility.USER
    v: int = SCHEMA_VERSION
    conversation_id: str = ""

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_TYPES


@dataclass(frozen=True, slots=True)
class NewEvent:
    """What a writer hands the store: the store adds run id, seq, time and attempt."""

    type: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    visibility: Visibility | None = None

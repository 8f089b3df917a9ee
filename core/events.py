"""Event types, visibility, and the event envelope (DESIGN §4).

Types keep the names of django-agent-runtime's ``EventType`` and add the lifecycle events an
event-sourced run needs (``run.queued``, ``run.cancel_requested``, ``run.retrying``) and the
``conversation.*`` events. Agents may also emit types of their own (any dotted string that is
not reserved for the lifecycle).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


# The projector builds an Event per log entry it reads; the frozen dataclass ``__init__`` goes through
# ``object.__setattr__`` per field, twice the cost of setting the slots directly. Same result (a
# test compares every field); only for values already decoded and checked, like ``__init__``.
_new_event = object.__new__


def _slot_setter(name: str) -> Callable[[Event, Any], None]:
    setter: Callable[[Event, Any], None] = vars(Event)[name].__set__  # the slot's member descriptor
    return setter


_set_run_id = _slot_setter("run_id")
_set_seq = _slot_setter("seq")
_set_type = _slot_setter("type")
_set_payload = _slot_setter("payload")
_set_ts_ms = _slot_setter("ts_ms")
_set_attempt = _slot_setter("attempt")
_set_visibility = _slot_setter("visibility")
_set_v = _slot_setter("v")
_set_conversation_id = _slot_setter("conversation_id")


def event_of(
    run_id: str,
    seq: int,
    type: str,
    payload: Mapping[str, Any],
    ts_ms: int,
    attempt: int,
    visibility: Visibility,
    v: int,
    conversation_id: str,
) -> Event:
    """``Event(...)`` with every field given positionally, built without the frozen ``__init__``."""
    event: Event = _new_event(Event)
    _set_run_id(event, run_id)
    _set_seq(event, seq)
    _set_type(event, type)
    _set_payload(event, payload)
    _set_ts_ms(event, ts_ms)
    _set_attempt(event, attempt)
    _set_visibility(event, visibility)
    _set_v(event, v)
    _set_conversation_id(event, conversation_id)
    return event


@dataclass(frozen=True, slots=True)
class NewEvent:
    """What a writer hands the store: the store adds run id, seq, time and attempt."""

    type: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    visibility: Visibility | None = None

"""The run state machine as a pure fold: ``evolve(state, event) -> state`` (DESIGN §5).

Legal transitions::

    (none) --run.queued--> queued
    queued --run.started--> running            attempt + 1 (the fencing token)
    running --run.started--> running           reclaim after a lost lease: attempt + 1
    running --run.retrying--> queued
    running --run.succeeded|failed|timed_out|cancelled--> terminal
    queued --run.cancelled--> cancelled
    running --run.cancel_requested | any non-lifecycle event--> running

Every event's ``seq`` is the previous one plus one, and every event but ``run.started`` carries
the current attempt. The Lua scripts in ``core/lua`` enforce the same table; a property test
checks that both agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agentstream.core.errors import FencedOut, IllegalTransition, RunTerminal
from agentstream.core.events import LIFECYCLE_TYPES, Event, EventType


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: frozenset[RunStatus] = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT}
)

_TERMINAL_STATUS_OF: Mapping[str, RunStatus] = {
    EventType.RUN_SUCCEEDED: RunStatus.SUCCEEDED,
    EventType.RUN_FAILED: RunStatus.FAILED,
    EventType.RUN_CANCELLED: RunStatus.CANCELLED,
    EventType.RUN_TIMED_OUT: RunStatus.TIMED_OUT,
}


@dataclass(frozen=True, slots=True)
class RunState:
    run_id: str
    status: RunStatus
    seq: int
    attempt: int = 0
    agent_key: str = ""
    owner: str = ""
    conversation_id: str = ""
    max_attempts: int = 1
    cancel_requested: bool = False
    created_ms: int = 0
    started_ms: int = 0
    finished_ms: int = 0
    output: Any = None
    error: Any = None
    usage: Mapping[str, Any] = field(default_factory=dict)


def evolve(state: RunState | None, event: Event) -> RunState:
    """Apply one event; raise ``IllegalTransition`` (or a subclass) when it is not allowed."""
    if state is None:
        return _first(event)
    if event.seq != state.seq + 1:
        raise IllegalTransition(f"run {state.run_id}: event seq {event.seq} does not follow seq {state.seq}")
    if state.status.is_terminal:
        raise RunTerminal(f"run {state.run_id} is {state.status}; {event.type} is not allowed after it ends")
    kind = event.type
    if kind == EventType.RUN_STARTED:
        if event.attempt != state.attempt + 1:
            raise FencedOut(
                f"run {state.run_id}: run.started for attempt {event.attempt}, "
                f"expected attempt {state.attempt + 1}"
            )
        return dataclasses.replace(
            state,
            status=RunStatus.RUNNING,
            seq=event.seq,
            attempt=event.attempt,
            started_ms=state.started_ms or event.ts_ms,
        )
    if event.attempt != state.attempt:
        raise FencedOut(
            f"run {state.run_id}: event of attempt {event.attempt}, current attempt is {state.attempt}"
        )
    if kind == EventType.RUN_CANCELLED and state.status is RunStatus.QUEUED:
        return _terminal(state, event, RunStatus.CANCELLED)
    if state.status is not RunStatus.RUNNING:
        raise IllegalTransition(f"run {state.run_id}: {kind} is not allowed while the run is {state.status}")
    if kind in _TERMINAL_STATUS_OF:
        return _terminal(state, event, _TERMINAL_STATUS_OF[kind])
    if kind == EventType.RUN_RETRYING:
        return dataclasses.replace(state, status=RunStatus.QUEUED, seq=event.seq)
    if kind == EventType.RUN_CANCEL_REQUESTED:
        return dataclasses.replace(state, seq=event.seq, cancel_requested=True)
    if kind in LIFECYCLE_TYPES:
        raise IllegalTransition(f"run {state.run_id}: {kind} is not allowed while running")
    return dataclasses.replace(state, seq=event.seq)


def fold(events: list[Event]) -> RunState | None:
    """The state after a whole history (``None`` for an empty one)."""
    state: RunState | None = None
    for event in events:
        state = evolve(state, event)
    return state


def _first(event: Event) -> RunState:
    if event.type != EventType.RUN_QUEUED or event.seq != 1:
        raise IllegalTransition(
            f"run {event.run_id}: the first event must be run.queued with seq 1, "
            f"got {event.type} with seq {event.seq}"
        )
    p = event.payload
    return RunState(
        run_id=event.run_id,
        status=RunStatus.QUEUED,
        seq=1,
        attempt=0,
        agent_key=str(p.get("agent_key", "")),
        owner=str(p.get("owner", "")),
        conversation_id=str(p.get("conversation_id") or ""),
        max_attempts=int(p.get("max_attempts", 1)),
        created_ms=event.ts_ms,
    )


def _terminal(state: RunState, event: Event, status: RunStatus) -> RunState:
    p = event.payload
    return dataclasses.replace(
        state,
        status=status,
        seq=event.seq,
        finished_ms=event.ts_ms,
        output=p.get("output", state.output),
        error=p.get("error", state.error),
        usage=p.get("usage") or state.usage,
    )


@dataclass(frozen=True, slots=True)
class ConversationState:
    conversation_id: str
    owner: str
    seq: int
    agent_key: str = ""
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    deleted: bool = False
    created_ms: int = 0
    updated_ms: int = 0
    active_branch_id: str = ""  # the branch a conversation.branch_switched chose last


def evolve_conversation(state: ConversationState | None, event: Event) -> ConversationState:
    """The conversation fold: created, then any number of updates, then at most one delete."""
    p = event.payload
    if state is None:
        if event.type != EventType.CONVERSATION_CREATED:
            raise IllegalTransition(
                f"conversation {event.conversation_id}: first event must be "
                f"conversation.created, got {event.type}"
            )
        return ConversationState(
            conversation_id=event.conversation_id,
            owner=str(p.get("owner", "")),
            seq=event.seq,
            agent_key=str(p.get("agent_key", "")),
            title=str(p.get("title", "")),
            metadata=dict(p.get("metadata") or {}),
            created_ms=event.ts_ms,
            updated_ms=event.ts_ms,
        )
    if state.deleted:
        raise IllegalTransition(f"conversation {state.conversation_id} is deleted")
    if event.type == EventType.CONVERSATION_UPDATED:
        return dataclasses.replace(
            state,
            seq=event.seq,
            title=str(p["title"]) if "title" in p else state.title,
            metadata=dict(p["metadata"]) if "metadata" in p else state.metadata,
            updated_ms=event.ts_ms,
        )
    if event.type == EventType.CONVERSATION_DELETED:
        return dataclasses.replace(state, seq=event.seq, deleted=True, updated_ms=event.ts_ms)
    if event.type == EventType.CONVERSATION_BRANCH_SWITCHED:
        branch = str(p.get("branch_id", ""))
        return dataclasses.replace(state, seq=event.seq, active_branch_id=branch, updated_ms=event.ts_ms)
    raise IllegalTransition(f"conversation {state.conversation_id}: {event.type} is not a conversation event")

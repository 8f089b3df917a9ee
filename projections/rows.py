"""Read-model rows as mergeable patches: pure, order-insensitive, idempotent (DESIGN §7).

A batch of events becomes one ``RunPatch`` per run and one ``ConversationPatch`` per conversation.
Patches merge like a lattice: every field is set by one kind of event and keeps the seq (or time)
that set it, and a merge keeps the newer one. So ``merge(a, b) == merge(b, a)``,
``merge(a, a) == a``, and any redelivery or reordering of a run's events gives the same row.
The SQL writers (``projections.sql``) perform this same merge inside ``INSERT .. ON CONFLICT``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentstream.core.events import TERMINAL_TYPES, Event, EventType
from agentstream.core.state import RunStatus

# Status each lifecycle event sets; the highest seq among them decides the row's status.
STATUS_OF_EVENT: Mapping[str, RunStatus] = {
    EventType.RUN_QUEUED: RunStatus.QUEUED,
    EventType.RUN_STARTED: RunStatus.RUNNING,
    EventType.RUN_RETRYING: RunStatus.QUEUED,
    EventType.RUN_SUCCEEDED: RunStatus.SUCCEEDED,
    EventType.RUN_FAILED: RunStatus.FAILED,
    EventType.RUN_CANCELLED: RunStatus.CANCELLED,
    EventType.RUN_TIMED_OUT: RunStatus.TIMED_OUT,
}

# Events that set a run field beyond last_seq / attempt / activity.
ROW_CHANGING_TYPES: frozenset[str] = frozenset({*STATUS_OF_EVENT, EventType.RUN_CANCEL_REQUESTED})

CONVERSATION_TYPES = frozenset(
    {
        EventType.CONVERSATION_CREATED,
        EventType.CONVERSATION_UPDATED,
        EventType.CONVERSATION_DELETED,
        EventType.CONVERSATION_BRANCH_SWITCHED,
    }
)


@dataclass(frozen=True, slots=True)
class Queued:
    """What ``run.queued`` says; written once, never changes."""

    owner: str
    agent_key: str
    conversation_id: str
    input: Mapping[str, Any]
    metadata: Mapping[str, Any]
    max_attempts: int
    idempotency_key: str | None
    created_ms: int
    parent_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Terminal:
    """What the run's one terminal event says."""

    finished_ms: int
    output: Any
    error: Any
    usage: Mapping[str, Any]
    final_messages: Any


@dataclass(frozen=True, slots=True)
class RunPatch:
    run_id: str
    last_seq: int = 0
    status: RunStatus | None = None
    status_seq: int = 0
    attempt: int = 0
    queued: Queued | None = None
    started_ms: int = 0  # the first start (0: none seen)
    cancel_requested_ms: int = 0  # the first request (0: none seen)
    terminal: Terminal | None = None
    conversation_id: str = ""  # from the envelope: known even before run.queued is seen
    last_activity_ms: int = 0


@dataclass(frozen=True, slots=True)
class ConversationPatch:
    conversation_id: str
    last_seq: int = 0
    owner: str = ""
    agent_key: str = ""
    created_ms: int = 0  # 0: conversation.created not seen yet
    title: str = ""
    title_seq: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)
    metadata_seq: int = 0
    deleted_ms: int = 0
    updated_ms: int = 0
    last_activity_ms: int = 0
    active_branch_id: str = ""  # set by conversation.branch_switched (the highest seq wins)
    active_branch_seq: int = 0
    active_branch_ms: int = 0


def _min_set(a: int, b: int) -> int:
    """The smaller of two optional times (0 means unset)."""
    if not a or not b:
        return a or b
    return min(a, b)


def merge_runs(a: RunPatch, b: RunPatch) -> RunPatch:
    newer = b if b.status_seq > a.status_seq else a
    return RunPatch(
        run_id=a.run_id,
        last_seq=max(a.last_seq, b.last_seq),
        status=newer.status,
        status_seq=newer.status_seq,
        attempt=max(a.attempt, b.attempt),
        queued=a.queued or b.queued,
        started_ms=_min_set(a.started_ms, b.started_ms),
        cancel_requested_ms=_min_set(a.cancel_requested_ms, b.cancel_requested_ms),
        terminal=a.terminal or b.terminal,
        conversation_id=a.conversation_id or b.conversation_id,
        last_activity_ms=max(a.last_activity_ms, b.last_activity_ms),
    )


def merge_conversations(a: ConversationPatch, b: ConversationPatch) -> ConversationPatch:
    created = a if a.created_ms else b
    title = b if b.title_seq > a.title_seq else a
    meta = b if b.metadata_seq > a.metadata_seq else a
    branch = b if b.active_branch_seq > a.active_branch_seq else a
    return ConversationPatch(
        conversation_id=a.conversation_id,
        last_seq=max(a.last_seq, b.last_seq),
        owner=created.owner,
        agent_key=created.agent_key,
        created_ms=created.created_ms,
        title=title.title,
        title_seq=title.title_seq,
        metadata=meta.metadata,
        metadata_seq=meta.metadata_seq,
        deleted_ms=_min_set(a.deleted_ms, b.deleted_ms),
        updated_ms=max(a.updated_ms, b.updated_ms),
        last_activity_ms=max(a.last_activity_ms, b.last_activity_ms),
        active_branch_id=branch.active_branch_id,
        active_branch_seq=branch.active_branch_seq,
        active_branch_ms=branch.active_branch_ms,
    )


def run_patch(event: Event) -> RunPatch:
    """The patch one run event makes (every run event moves ``last_seq``, attempt and activity)."""
    kind = event.type
    p = event.payload
    status = STATUS_OF_EVENT.get(kind)
    queued: Queued | None = None
    terminal: Terminal | None = None
    conversation_id = event.conversation_id
    if kind == EventType.RUN_QUEUED:
        idem = p.get("idempotency_key")
        conversation_id = str(p.get("conversation_id") or event.conversation_id or "")
        queued = Queued(
            owner=str(p.get("owner", "")),
            agent_key=str(p.get("agent_key", "")),
            conversation_id=str(p.get("conversation_id") or ""),
            input={"messages": list(p.get("messages") or []), "params": dict(p.get("params") or {})},
            metadata=dict(p.get("metadata") or {}),
            max_attempts=int(p.get("max_attempts") or 1),
            idempotency_key=str(idem) if idem else None,
            created_ms=event.ts_ms,
            parent_message_id=str(p["parent_message_id"]) if p.get("parent_message_id") is not None else None,
        )
    elif kind in TERMINAL_TYPES:
        terminal = Terminal(
            finished_ms=event.ts_ms,
            output=p.get("output"),
            error=p.get("error"),
            usage=dict(p.get("usage") or {}),
            final_messages=p.get("final_messages"),
        )
    return RunPatch(
        run_id=event.run_id,
        last_seq=event.seq,
        status=status,
        status_seq=event.seq if status is not None else 0,
        attempt=event.attempt,
        queued=queued,
        started_ms=event.ts_ms if kind == EventType.RUN_STARTED else 0,
        cancel_requested_ms=event.ts_ms if kind == EventType.RUN_CANCEL_REQUESTED else 0,
        terminal=terminal,
        conversation_id=conversation_id,
        last_activity_ms=event.ts_ms,
    )


def conversation_patch(event: Event) -> ConversationPatch:
    p = event.payload
    base = ConversationPatch(
        conversation_id=event.conversation_id, last_seq=event.seq, updated_ms=event.ts_ms
    )
    if event.type == EventType.CONVERSATION_CREATED:
        return dataclasses.replace(
            base,
            owner=str(p.get("owner", "")),
            agent_key=str(p.get("agent_key", "")),
            created_ms=event.ts_ms,
            title=str(p.get("title", "")),
            title_seq=event.seq,
            metadata=dict(p.get("metadata") or {}),
            metadata_seq=event.seq,
            last_activity_ms=event.ts_ms,
        )
    if event.type == EventType.CONVERSATION_UPDATED:
        if "title" in p:
            base = dataclasses.replace(base, title=str(p["title"]), title_seq=event.seq)
        if "metadata" in p:
            base = dataclasses.replace(base, metadata=dict(p["metadata"] or {}), metadata_seq=event.seq)
        return base
    if event.type == EventType.CONVERSATION_DELETED:
        return dataclasses.replace(base, deleted_ms=event.ts_ms)
    if event.type == EventType.CONVERSATION_BRANCH_SWITCHED:
        return dataclasses.replace(
            base,
            active_branch_id=str(p.get("branch_id", "")),
            active_branch_seq=event.seq,
            active_branch_ms=event.ts_ms,
        )
    return base


@dataclass(frozen=True, slots=True)
class Patches:
    runs: dict[str, RunPatch]
    conversations: dict[str, ConversationPatch]


def fold_patches(events: Iterable[Event]) -> Patches:
    """One patch per run and per conversation for a batch (any order, duplicates allowed).

    The same as merging ``run_patch`` of every event; most events (tool calls, messages) only
    move last_seq, attempt and activity, so those take a short path and merge once per run.
    """
    runs: dict[str, RunPatch] = {}
    light: dict[str, list[int]] = {}  # run id -> [last_seq, attempt, last_activity_ms]
    conversation_of: dict[str, str] = {}
    activity: dict[str, int] = {}  # conversation id -> its runs' last activity
    conversations: dict[str, ConversationPatch] = {}
    for event in events:
        run_id = event.run_id
        if run_id:
            if event.type in ROW_CHANGING_TYPES:
                patch = run_patch(event)
                old = runs.get(run_id)
                runs[run_id] = patch if old is None else merge_runs(old, patch)
                conv_id = patch.conversation_id
            else:
                acc = light.get(run_id)
                if acc is None:
                    light[run_id] = [event.seq, event.attempt, event.ts_ms]
                else:
                    acc[0] = max(acc[0], event.seq)
                    acc[1] = max(acc[1], event.attempt)
                    acc[2] = max(acc[2], event.ts_ms)
                conv_id = event.conversation_id
            if conv_id:
                conversation_of[run_id] = conv_id
                activity[conv_id] = max(activity.get(conv_id, 0), event.ts_ms)
        elif event.conversation_id and event.type in CONVERSATION_TYPES:
            cpatch = conversation_patch(event)
            found = conversations.get(event.conversation_id)
            conversations[event.conversation_id] = (
                cpatch if found is None else merge_conversations(found, cpatch)
            )
    for run_id, (seq, attempt, last_ms) in light.items():
        base = RunPatch(
            run_id=run_id,
            last_seq=seq,
            attempt=attempt,
            conversation_id=conversation_of.get(run_id, ""),
            last_activity_ms=last_ms,
        )
        old = runs.get(run_id)
        runs[run_id] = base if old is None else merge_runs(old, base)
    for conv_id, last_ms in activity.items():
        touch = ConversationPatch(conversation_id=conv_id, last_activity_ms=last_ms)
        found = conversations.get(conv_id)
        conversations[conv_id] = touch if found is None else merge_conversations(found, touch)
    return Patches(runs, conversations)

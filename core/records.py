"""Owner-scoped agent stores as events: memory, preferences, tasks, knowledge (pure).

A store write is an event of the run that made it (``memory.set``, ``task.upserted``, ...); its
payload names the owner (the run's, set by the runtime, never by the agent) and carries the full
new value of one record. A record keeps the ``Version`` of the write that set it and a newer
version replaces it, whatever order writes arrive in; a delete is a tombstone with a version. So
applying the same events once, twice or shuffled gives the same rows: the worker's write-through,
the projector and a replay all converge.

``Version`` = (the writer's clock in µs, run id, seq). The clock (strictly increasing within a
process) orders writes of different runs of one owner; (run id, seq) breaks the ties left between
processes. Writes of one key made by two hosts within their clock skew may therefore be ordered
by the clocks rather than by real time, but every writer picks the same winner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agentstream.core.errors import InvalidRecord
from agentstream.core.events import Event, EventType

MAX_KEY_CHARS = 255
# pgvector computes in float4 (largest ~3.4e38, smallest normal ~1.2e-38): a norm up to 1e18 keeps
# every sum of squares below 1e36, and one of at least 1e-12 keeps some square a normal float4
# even at 16,000 dimensions, so no database's cosine overflows or divides by a norm of 0
MIN_NORM = 1e-12
MAX_NORM = 1e18


class TaskStatus(StrEnum):
    NOT_STARTED = "not_started"
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    CANCELLED = "cancelled"


class StoreKind(StrEnum):
    MEMORY = "memory"
    PREFERENCE = "preference"
    TASK = "task"
    KNOWLEDGE = "knowledge"


# event type -> (store, is a delete)
STORE_EVENTS: Mapping[str, tuple[StoreKind, bool]] = {
    EventType.MEMORY_SET: (StoreKind.MEMORY, False),
    EventType.MEMORY_DELETED: (StoreKind.MEMORY, True),
    EventType.PREFERENCE_SET: (StoreKind.PREFERENCE, False),
    EventType.PREFERENCE_DELETED: (StoreKind.PREFERENCE, True),
    EventType.TASK_UPSERTED: (StoreKind.TASK, False),
    EventType.TASK_DELETED: (StoreKind.TASK, True),
    EventType.KNOWLEDGE_ADDED: (StoreKind.KNOWLEDGE, False),
    EventType.KNOWLEDGE_DELETED: (StoreKind.KNOWLEDGE, True),
}
STORE_TYPES: frozenset[str] = frozenset(STORE_EVENTS)


@dataclass(frozen=True, slots=True, order=True)
class Version:
    at_us: int
    run_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class StoreRecord:
    """One record's new state, as one event sets it (``deleted``: a tombstone)."""

    kind: StoreKind
    owner: str
    key: str  # memory/preference key, task id, knowledge item id
    version: Version
    deleted: bool = False
    value: Any = None  # memory / preference value
    fields: Mapping[str, Any] = field(default_factory=dict)  # task / knowledge fields


def check_key(what: str, key: object) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        raise InvalidRecord(f"{what} must be a non-empty string of at most {MAX_KEY_CHARS} characters")
    return key


def check_embedding(embedding: Sequence[float] | None) -> list[float] | None:
    """A plain list of finite floats with a non-zero norm (cosine needs one), or None."""
    if embedding is None:
        return None
    try:
        vector = [float(x) for x in embedding]
    except (TypeError, ValueError):
        raise InvalidRecord("embedding must be a sequence of numbers") from None
    if not vector or not all(math.isfinite(x) for x in vector) or not any(vector):
        raise InvalidRecord("embedding must be a non-empty vector of finite numbers, not all zero")
    if not MIN_NORM <= norm(vector) <= MAX_NORM:
        raise InvalidRecord(f"embedding's length must be within {MIN_NORM:g}..{MAX_NORM:g}; normalise it")
    return vector


def norm(vector: Sequence[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in vector))


def cosine(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Cosine similarity; None when the dimensions differ (such rows never match)."""
    if len(a) != len(b):
        return None
    na, nb = norm(a), norm(b)
    if not na or not nb:
        return None
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


# a task's priority is an integer column of the task table (32 bits)
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1


def task_fields(
    *,
    title: str,
    status: str = TaskStatus.NOT_STARTED,
    priority: int = 0,
    depends_on: Sequence[str] = (),
    task_list: str = "default",
    notes: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A task's full state, validated; what ``task.upserted`` carries."""
    try:
        state = TaskStatus(status)
    except ValueError:
        valid = ", ".join(s.value for s in TaskStatus)
        raise InvalidRecord(f"task status {status!r} is not one of {valid}") from None
    if not isinstance(title, str) or not title.strip():
        raise InvalidRecord("a task needs a non-empty title")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidRecord(f"task priority must be an int, got {type(priority).__name__}")
    deps = [check_key("a dependency's task id", d) for d in depends_on]
    return {
        "title": title,
        "status": state.value,
        "priority": priority,
        "depends_on": sorted(set(deps)),
        "task_list": check_key("a task list name", task_list),
        "notes": str(notes),
        "metadata": dict(metadata or {}),
    }


def check_dependencies(task_id: str, depends_on: Sequence[str], graph: Mapping[str, Sequence[str]]) -> None:
    """Refuse unknown dependencies and cycles; ``graph``: the owner's task ids -> their dependencies."""
    missing = [d for d in depends_on if d not in graph]
    if missing:
        raise InvalidRecord(f"task {task_id!r} depends on unknown task(s) {', '.join(missing)}")
    links = {**graph, task_id: tuple(depends_on)}
    seen: set[str] = set()
    stack = list(depends_on)
    while stack:  # a cycle exists iff task_id is reachable from its own dependencies
        node = stack.pop()
        if node == task_id:
            raise InvalidRecord(f"task {task_id!r} would depend on itself through {', '.join(depends_on)}")
        if node not in seen:
            seen.add(node)
            stack.extend(links.get(node, ()))


def store_payload(store: StoreKind, owner: str, key: str, at_us: int, **body: Any) -> dict[str, Any]:
    """The payload of a store event: who owns the record, which record, when, and the new value."""
    name = {StoreKind.TASK: "task_id", StoreKind.KNOWLEDGE: "item_id"}.get(store, "key")
    return {"owner": owner, name: key, "at_us": at_us, **body}


def record_of(event: Event) -> StoreRecord | None:
    """The record a store event sets; None for other events and for malformed payloads."""
    found = STORE_EVENTS.get(event.type)
    if found is None:
        return None
    kind, deleted = found
    p = event.payload
    key = p.get("key", p.get("task_id", p.get("item_id")))
    owner = p.get("owner")
    at_us = p.get("at_us")
    if not (isinstance(key, str) and key and isinstance(owner, str) and owner and isinstance(at_us, int)):
        return None
    version = Version(at_us, event.run_id, event.seq)
    if deleted:
        return StoreRecord(kind, owner, key, version, deleted=True)
    if kind in (StoreKind.MEMORY, StoreKind.PREFERENCE):
        return StoreRecord(kind, owner, key, version, value=p.get("value"))
    body = {k: v for k, v in p.items() if k not in ("owner", "key", "task_id", "item_id", "at_us")}
    return StoreRecord(kind, owner, key, version, fields=body)


def latest(records: Sequence[StoreRecord]) -> dict[tuple[StoreKind, str, str], StoreRecord]:
    """Per (store, owner, key): the record with the newest version (a batch's net effect)."""
    out: dict[tuple[StoreKind, str, str], StoreRecord] = {}
    for record in records:
        slot = (record.kind, record.owner, record.key)
        old = out.get(slot)
        if old is None or record.version > old.version:
            out[slot] = record
    return out

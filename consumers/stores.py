"""The stores an agent keeps across runs: ``ctx.memory``, ``ctx.preferences``, ``ctx.tasks``,
``ctx.knowledge`` — always the run owner's, never anyone else's.

Each store object is bound to the run's owner when the context is made; no method takes an owner,
so no call can reach another owner's records. A write is (1) an event of the run, appended through
the context (fenced: a superseded attempt writes nothing; replayable), then (2) applied to the
backend at once with the projector's own idempotent merge, so the next read — in this run or the
owner's next one — sees it without waiting for the projector.

``StoreBackend`` is the one port: SQL in ``agentstream.django_app.stores`` (injected into the
worker by ``runagent`` and the demo), ``InMemoryStoreBackend`` here for tests of agents.
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from agentstream.core.errors import InvalidRecord
from agentstream.core.events import Event, EventType
from agentstream.core.records import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    StoreKind,
    StoreRecord,
    TaskStatus,
    Version,
    check_dependencies,
    check_embedding,
    check_key,
    cosine,
    latest,
    record_of,
    store_payload,
    task_fields,
)

# what a RunContext gives a store: append one event now, get it back with its seq
Recorder = Callable[[str, Mapping[str, Any]], Awaitable[Event]]

_NO_VERSION = Version(0, "", 0)  # a Task built from the fields just written needs none
DONE_STATUSES = frozenset({TaskStatus.COMPLETE, TaskStatus.CANCELLED})


# what the tables hold (PostgreSQL: text without NUL, a 32-bit priority, JSON nested < 255 levels
# for the projector's encoder): a write refused here is never recorded, since a recorded event
# the tables cannot take would fail the write-through and stall the projection that applies it
def checked_key(what: str, key: object) -> str:
    """``check_key``, and no NUL: PostgreSQL text cannot hold one (a read would fail too)."""
    found = check_key(what, key)
    if "\x00" in found:
        raise InvalidRecord(f"{what} must not contain NUL (\\x00)")
    return found


def checked_text(what: str, text: Any) -> Any:
    if isinstance(text, str) and "\x00" in text:
        raise InvalidRecord(f"{what} must not contain NUL (\\x00); PostgreSQL text cannot hold it")
    return text


def checked_json(what: str, value: Any) -> Any:
    """A value the store tables can hold as JSON (the projector's encoder: orjson)."""
    try:
        orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:  # nested too deep (orjson stops at 255 levels), an int past 64 bits
        raise InvalidRecord(f"{what} cannot be stored as JSON ({exc})") from None
    return value


def checked_task_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """``task_fields``' output, checked against the task table."""
    if not MIN_PRIORITY <= fields["priority"] <= MAX_PRIORITY:
        raise InvalidRecord(f"task priority {fields['priority']} is outside {MIN_PRIORITY}..{MAX_PRIORITY}")
    for name in ("title", "notes", "task_list"):
        checked_text(f"a task's {name}", fields[name])
    for dependency in fields["depends_on"]:
        checked_key("a dependency's task id", dependency)
    checked_json("a task's metadata", fields["metadata"])
    return fields


@dataclass(frozen=True, slots=True)
class Match:
    """A knowledge search hit: the record and its cosine similarity (1 = same direction)."""

    record: StoreRecord
    score: float


class StoreBackend(Protocol):
    """Where the stores live. Every read takes the owner; only store objects call it."""

    async def apply(self, events: Sequence[Event]) -> None:
        """Merge store events into the records (idempotent, order-insensitive)."""

    async def get(self, kind: StoreKind, owner: str, key: str) -> StoreRecord | None:
        """The live record (None when absent or deleted)."""

    async def list(self, kind: StoreKind, owner: str, *, prefix: str = "") -> builtins.list[StoreRecord]:
        """The owner's live records of a store, ordered by key."""

    async def search(
        self, owner: str, embedding: Sequence[float], *, k: int, kind: str | None = None
    ) -> builtins.list[Match]:
        """The ``k`` knowledge items most similar to ``embedding`` (cosine), best first."""


_last_us = 0


def now_us() -> int:
    """The writer's clock in microseconds, strictly increasing within the process: of two writes
    made one after the other here, the later always has the newer version."""
    global _last_us
    _last_us = max(time.time_ns() // 1000, _last_us + 1)
    return _last_us


class _OwnedStore:
    kind: StoreKind

    def __init__(self, record: Recorder, backend: StoreBackend, owner: str) -> None:
        if not owner:
            raise InvalidRecord("this run has no owner, so it has no stores; submit it for a user or session")
        self._record = record
        self._backend = backend
        self._owner = owner

    async def _write(self, event_type: EventType, key: str, **body: Any) -> None:
        event = await self._record(event_type, store_payload(self.kind, self._owner, key, now_us(), **body))
        await self._backend.apply([event])


class KeyValueStore(_OwnedStore):
    """A JSON value per key (``ctx.memory``, ``ctx.preferences``)."""

    set_type: EventType
    delete_type: EventType

    async def get(self, key: str, default: Any = None) -> Any:
        found = await self._backend.get(self.kind, self._owner, checked_key("a key", key))
        return default if found is None else found.value

    async def set(self, key: str, value: Any) -> None:
        await self._write(self.set_type, checked_key("a key", key), value=checked_json("the value", value))

    async def delete(self, key: str) -> None:
        await self._write(self.delete_type, checked_key("a key", key))

    async def items(self, prefix: str = "") -> dict[str, Any]:
        return {r.key: r.value for r in await self._backend.list(self.kind, self._owner, prefix=prefix)}


class Memory(KeyValueStore):
    kind = StoreKind.MEMORY
    set_type = EventType.MEMORY_SET
    delete_type = EventType.MEMORY_DELETED


class Preferences(KeyValueStore):
    kind = StoreKind.PREFERENCE
    set_type = EventType.PREFERENCE_SET
    delete_type = EventType.PREFERENCE_DELETED


@dataclass(frozen=True, slots=True)
class Task:
    task_id: str
    title: str
    status: TaskStatus
    priority: int = 0
    depends_on: tuple[str, ...] = ()
    task_list: str = "default"
    notes: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: StoreRecord) -> Task:
        f = record.fields
        return cls(
            task_id=record.key,
            title=str(f.get("title", "")),
            status=TaskStatus(f.get("status", TaskStatus.NOT_STARTED)),
            priority=int(f.get("priority", 0)),
            depends_on=tuple(f.get("depends_on") or ()),
            task_list=str(f.get("task_list", "default")),
            notes=str(f.get("notes", "")),
            metadata=dict(f.get("metadata") or {}),
        )


class Tasks(_OwnedStore):
    """Task lists: states, priorities (higher first) and dependencies between the owner's tasks."""

    kind = StoreKind.TASK

    async def add(
        self,
        title: str,
        *,
        priority: int = 0,
        depends_on: Sequence[str] = (),
        task_list: str = "default",
        notes: str = "",
        metadata: Mapping[str, Any] | None = None,
        task_id: str | None = None,
    ) -> Task:
        task_id = checked_key("a task id", task_id or str(uuid.uuid4()))
        fields = task_fields(
            title=title,
            priority=priority,
            depends_on=depends_on,
            task_list=task_list,
            notes=notes,
            metadata=metadata,
        )
        return await self._save(task_id, fields)

    async def update(self, task_id: str, **changes: Any) -> Task:
        """Change some fields (title, status, priority, depends_on, task_list, notes, metadata)."""
        current = await self.get(task_id)
        if current is None:
            raise InvalidRecord(f"no task {task_id!r} in this owner's task lists")
        allowed = {"title", "status", "priority", "depends_on", "task_list", "notes", "metadata"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidRecord(
                f"unknown task field(s) {', '.join(sorted(unknown))}; use {', '.join(sorted(allowed))}"
            )
        merged: dict[str, Any] = {
            "title": current.title,
            "status": current.status,
            "priority": current.priority,
            "depends_on": current.depends_on,
            "task_list": current.task_list,
            "notes": current.notes,
            "metadata": current.metadata,
            **changes,
        }
        return await self._save(task_id, task_fields(**merged))

    async def set_status(self, task_id: str, status: str) -> Task:
        return await self.update(task_id, status=status)

    async def get(self, task_id: str) -> Task | None:
        found = await self._backend.get(self.kind, self._owner, checked_key("a task id", task_id))
        return None if found is None else Task.from_record(found)

    async def list(self, task_list: str | None = None, *, status: str | None = None) -> builtins.list[Task]:
        """Tasks by priority (highest first), then id; optionally of one list or status."""
        tasks = [Task.from_record(r) for r in await self._backend.list(self.kind, self._owner)]
        tasks = [
            t
            for t in tasks
            if (task_list is None or t.task_list == task_list) and (status is None or t.status == status)
        ]
        return sorted(tasks, key=lambda t: (-t.priority, t.task_id))

    async def ready(self, task_list: str | None = None) -> builtins.list[Task]:
        """Not-started tasks whose dependencies are all complete or cancelled, by priority."""
        every = {t.task_id: t for t in await self.list()}
        return [
            t
            for t in every.values()
            if t.status == TaskStatus.NOT_STARTED
            and (task_list is None or t.task_list == task_list)
            and all(d in every and every[d].status in DONE_STATUSES for d in t.depends_on)
        ]

    async def delete(self, task_id: str) -> None:
        await self._write(EventType.TASK_DELETED, checked_key("a task id", task_id))

    async def _save(self, task_id: str, fields: dict[str, Any]) -> Task:
        checked_task_fields(fields)
        if fields["depends_on"]:
            await self._check_dependencies(task_id, fields["depends_on"])
        await self._write(EventType.TASK_UPSERTED, task_id, **fields)
        return Task.from_record(StoreRecord(StoreKind.TASK, self._owner, task_id, _NO_VERSION, fields=fields))

    async def _check_dependencies(self, task_id: str, depends_on: Sequence[str]) -> None:
        check_dependencies(task_id, depends_on, {t.task_id: t.depends_on for t in await self.list()})


class Knowledge(_OwnedStore):
    """Facts, summaries and documents, with similarity search over the embeddings given to ``add``.

    The embedding is the caller's (any model; one dimension per owner's items is expected: items
    of another dimension never match). The payload size cap (MAX_EVENT_BYTES) bounds one item.
    """

    kind = StoreKind.KNOWLEDGE

    async def add(
        self,
        text: str,
        *,
        embedding: Sequence[float] | None = None,
        kind: str = "fact",
        metadata: Mapping[str, Any] | None = None,
        item_id: str | None = None,
    ) -> str:
        item_id = checked_key("an item id", item_id or str(uuid.uuid4()))
        if not isinstance(text, str):
            raise InvalidRecord("knowledge text must be a string")
        await self._write(
            EventType.KNOWLEDGE_ADDED,
            item_id,
            text=checked_text("knowledge text", text),
            kind=checked_key("a knowledge kind", kind),
            metadata=checked_json("the metadata", dict(metadata or {})),
            embedding=check_embedding(embedding),
        )
        return item_id

    async def get(self, item_id: str) -> StoreRecord | None:
        return await self._backend.get(self.kind, self._owner, checked_key("an item id", item_id))

    async def list(self, kind: str | None = None) -> builtins.list[StoreRecord]:
        found = await self._backend.list(self.kind, self._owner)
        return [r for r in found if kind is None or r.fields.get("kind") == kind]

    async def search(
        self, embedding: Sequence[float], *, k: int = 5, kind: str | None = None
    ) -> builtins.list[Match]:
        vector = check_embedding(embedding)
        assert vector is not None  # check_embedding returns None only for None
        if k < 1:
            raise InvalidRecord(f"k={k}; ask for at least one match")
        if kind is not None and "\x00" in kind:
            return []  # no item's kind holds a NUL (and PostgreSQL could not compare it)
        return await self._backend.search(self._owner, vector, k=k, kind=kind)

    async def delete(self, item_id: str) -> None:
        await self._write(EventType.KNOWLEDGE_DELETED, checked_key("an item id", item_id))


class InMemoryStoreBackend:
    """The in-memory twin of the SQL backend: the same merge (newest version wins, tombstones)."""

    def __init__(self) -> None:
        self.records: dict[tuple[StoreKind, str, str], StoreRecord] = {}

    async def apply(self, events: Sequence[Event]) -> None:
        found = [r for r in (record_of(e) for e in events) if r is not None]
        for slot, record in latest(found).items():
            old = self.records.get(slot)
            if old is None or record.version > old.version:
                self.records[slot] = record

    async def get(self, kind: StoreKind, owner: str, key: str) -> StoreRecord | None:
        found = self.records.get((kind, owner, key))
        return None if found is None or found.deleted else found

    async def list(self, kind: StoreKind, owner: str, *, prefix: str = "") -> builtins.list[StoreRecord]:
        return sorted(
            (
                r
                for (k, o, key), r in self.records.items()
                if k == kind and o == owner and key.startswith(prefix) and not r.deleted
            ),
            key=lambda r: r.key,
        )

    async def search(
        self, owner: str, embedding: Sequence[float], *, k: int, kind: str | None = None
    ) -> builtins.list[Match]:
        matches: builtins.list[Match] = []
        for record in await self.list(StoreKind.KNOWLEDGE, owner):
            vector = record.fields.get("embedding")
            if not vector or (kind is not None and record.fields.get("kind") != kind):
                continue
            score = cosine(embedding, vector)
            if score is not None:
                matches.append(Match(record, score))
        matches.sort(key=lambda m: (-m.score, m.record.key))
        return matches[:k]

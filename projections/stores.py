"""The owner-scoped agent stores as read-models: memory, preferences, tasks, knowledge.

One merge, used by three writers: the worker's write-through (``django_app.stores``), the
``stores`` projection, and replay. A batch's store events collapse to the newest record per
(store, owner, key) (``core.records.latest``); then one ``INSERT .. ON CONFLICT (owner, key) DO
UPDATE .. WHERE <newer version>`` per table (executemany, on PostgreSQL and SQLite alike: these
tables take few writes next to the event archive). Re-applying, reordering or duplicating events
changes nothing; deletes are tombstones, so a late ``set`` cannot resurrect a deleted key.

Knowledge items keep their embedding as ``double precision[]`` on PostgreSQL (float64 bytes on
SQLite); ``projections.similarity`` ranks them.
"""

from __future__ import annotations

import array
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from django.db.backends.base.base import BaseDatabaseWrapper

from agentstream.core.events import Event
from agentstream.core.records import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    STORE_TYPES,
    StoreKind,
    StoreRecord,
    Version,
    latest,
    norm,
    record_of,
)
from agentstream.projections.projection import Projection
from agentstream.projections.sql import Dialect, to_json

NAME = "stores"
log = logging.getLogger("agentstream.projector")

BASE_COLUMNS = ("owner", "deleted", "version_us", "version_run", "version_seq", "updated_at")


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    key: str  # the column holding the record's key
    columns: tuple[str, ...]  # beyond BASE_COLUMNS and key


TABLES: dict[StoreKind, Table] = {
    StoreKind.MEMORY: Table("agentstream_memory", "key", ("value",)),
    StoreKind.PREFERENCE: Table("agentstream_preference", "key", ("value",)),
    StoreKind.TASK: Table(
        "agentstream_task",
        "task_id",
        ("task_list", "title", "status", "priority", "depends_on", "notes", "metadata"),
    ),
    StoreKind.KNOWLEDGE: Table(
        "agentstream_knowledge",
        "item_id",
        ("kind", "text", "metadata", "embedding", "embedding_norm", "dimensions"),
    ),
}


def vector_to_db(value: Sequence[float] | None, postgres: bool) -> Any:
    if value is None:
        return None
    if postgres:
        return [float(x) for x in value]
    return array.array("d", value).tobytes()


def vector_from_db(value: Any) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return array.array("d", bytes(value)).tolist()
    return [float(x) for x in value]


def _columns(table: Table) -> tuple[str, ...]:
    return (table.key, *BASE_COLUMNS, *table.columns)


def _conflict(table: Table) -> str:
    t = table.name
    updates = ", ".join(f"{c} = excluded.{c}" for c in (*BASE_COLUMNS, *table.columns) if c != "owner")
    newer = (
        f"(excluded.version_us, excluded.version_run, excluded.version_seq) > "
        f"({t}.version_us, {t}.version_run, {t}.version_seq)"
    )
    return f"ON CONFLICT (owner, {table.key}) DO UPDATE SET {updates} WHERE {newer}"


class StoreWriter:
    """Merges store records into their tables through one connection (the caller's transaction)."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection
        self.d = Dialect(connection)

    def apply(self, events: Sequence[Event]) -> int:
        """Merge the store events among ``events``; returns how many records they touch."""
        records = [
            _storable(r) for r in (record_of(e) for e in events if e.type in STORE_TYPES) if r is not None
        ]
        newest = latest(records)
        by_kind: dict[StoreKind, list[StoreRecord]] = {}
        for (kind, _, _), record in sorted(newest.items()):  # one lock order: no deadlocks
            by_kind.setdefault(kind, []).append(record)
        for kind, found in by_kind.items():
            table = TABLES[kind]
            rows = [self._row(r) for r in found]
            marks = ", ".join(["%s"] * len(_columns(table)))
            with self.connection.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {table.name} ({', '.join(_columns(table))}) VALUES ({marks}) {_conflict(table)}",
                    rows,
                )
        return len(newest)

    def _row(self, r: StoreRecord) -> tuple[Any, ...]:
        d = self.d
        v: Version = r.version
        base = (r.key, r.owner, r.deleted, v.at_us, v.run_id, v.seq, d.ts(v.at_us // 1000) or d.ts(1))
        f = r.fields
        if r.kind in (StoreKind.MEMORY, StoreKind.PREFERENCE):
            return (*base, None if r.deleted else _json(r, r.value, None))
        if r.kind == StoreKind.TASK:
            return (
                *base,
                _text(f.get("task_list", "default")),
                _text(f.get("title", "")),
                _text(f.get("status", "not_started")),
                min(max(int(f.get("priority", 0) or 0), MIN_PRIORITY), MAX_PRIORITY),
                _json(r, list(f.get("depends_on") or []), []),
                _text(f.get("notes", "")),
                _json(r, dict(f.get("metadata") or {}), {}),
            )
        vector = f.get("embedding")
        vector = [float(x) for x in vector] if isinstance(vector, list) and vector else None
        return (
            *base,
            _text(f.get("kind", "fact")),
            _text(f.get("text", "")),
            _json(r, dict(f.get("metadata") or {}), {}),
            vector_to_db(vector, d.postgres),
            norm(vector) if vector else None,
            len(vector) if vector else 0,
        )

    def reset(self) -> None:
        with self.connection.cursor() as cursor:
            for table in TABLES.values():
                cursor.execute(f"DELETE FROM {table.name}")


# Events the write path refuses today (``consumers.stores.checked_*``) may sit in older logs and
# archives: they are stored as near as the tables allow, never left to fail a batch for ever.


def _text(value: Any) -> str:
    """PostgreSQL text holds no NUL: U+FFFD instead, as ``to_json`` does in JSON (on both engines)."""
    text = str(value)
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _storable(r: StoreRecord) -> StoreRecord:
    if "\x00" in r.key or "\x00" in r.owner:
        return dataclasses.replace(r, key=_text(r.key), owner=_text(r.owner))
    return r


def _json(r: StoreRecord, value: Any, instead: Any) -> str | None:
    try:
        return to_json(value)
    except TypeError as exc:  # nested past orjson's 255 levels
        log.warning("%s %r of %s: %s; stored as %r", r.kind.value, r.key, r.owner, exc, instead)
        return None if instead is None else to_json(instead)


class StoresProjection(Projection):
    """Built in: keeps the store tables in step with the logs (and rebuilds them on replay)."""

    name: ClassVar[str] = NAME
    event_types: ClassVar[frozenset[str] | None] = STORE_TYPES

    def handle(self, events: Sequence[Event], connection: BaseDatabaseWrapper) -> None:
        StoreWriter(connection).apply(events)

    def reset(self, connection: BaseDatabaseWrapper) -> None:
        StoreWriter(connection).reset()

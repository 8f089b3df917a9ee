"""The owner-scoped agent stores as read-models: memory, preferences, tasks, knowledge.

One merge, used by three writers: the worker's write-through (``django_app.stores``), the
``stores`` projection, and replay. A batch's store events collapse to the newest record per
(store, owner, key) (``core.records.latest``); then one ``INSERT .. ON CONFLICT (owner, key) DO
UPDATE .. WHERE <newer version>`` per table (executemany, on PostgreSQL and SQLite alike: these
tables take few writes next to the event archive). Re-applying, reordering or duplicating events
changes nothing; deletes are tombstones, so a late ``set`` cannot resurrect a deleted key.

Similarity search never loads the rows into Python: PostgreSQL computes the cosine over a
``double precision[]`` column in SQL (or, with pgvector installed, see ``VectorSearch``); SQLite
calls a registered function over float64 bytes.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from django.db.backends.base.base import BaseDatabaseWrapper

from agentstream.core.events import Event
from agentstream.core.records import STORE_TYPES, StoreKind, StoreRecord, Version, latest, norm, record_of
from agentstream.projections.projection import Projection
from agentstream.projections.sql import Dialect, to_json

NAME = "stores"

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


def _sqlite_dot(a: bytes | None, b: bytes | None) -> float | None:
    if a is None or b is None or len(a) != len(b):
        return None
    x, y = array.array("d", a), array.array("d", b)
    return sum(p * q for p, q in zip(x, y, strict=True))


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
        records = [r for r in (record_of(e) for e in events if e.type in STORE_TYPES) if r is not None]
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
            return (*base, None if r.deleted else to_json(r.value))
        if r.kind == StoreKind.TASK:
            return (
                *base,
                str(f.get("task_list", "default")),
                str(f.get("title", "")),
                str(f.get("status", "not_started")),
                int(f.get("priority", 0) or 0),
                to_json(list(f.get("depends_on") or [])),
                str(f.get("notes", "")),
                to_json(dict(f.get("metadata") or {})),
            )
        vector = f.get("embedding")
        vector = [float(x) for x in vector] if isinstance(vector, list) and vector else None
        return (
            *base,
            str(f.get("kind", "fact")),
            str(f.get("text", "")),
            to_json(dict(f.get("metadata") or {})),
            vector_to_db(vector, d.postgres),
            norm(vector) if vector else None,
            len(vector) if vector else 0,
        )

    def reset(self) -> None:
        with self.connection.cursor() as cursor:
            for table in TABLES.values():
                cursor.execute(f"DELETE FROM {table.name}")


class StoresProjection(Projection):
    """Built in: keeps the store tables in step with the logs (and rebuilds them on replay)."""

    name: ClassVar[str] = NAME
    event_types: ClassVar[frozenset[str] | None] = STORE_TYPES

    def handle(self, events: Sequence[Event], connection: BaseDatabaseWrapper) -> None:
        StoreWriter(connection).apply(events)

    def reset(self, connection: BaseDatabaseWrapper) -> None:
        StoreWriter(connection).reset()


# -- similarity search ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hit:
    item_id: str
    score: float


def search_knowledge(
    connection: BaseDatabaseWrapper, owner: str, vector: Sequence[float], *, k: int, kind: str | None = None
) -> list[Hit]:
    """The ``k`` live items of ``owner`` most similar to ``vector`` (cosine), best first.

    The database ranks and returns ``k`` ids; no embedding crosses into Python.
    """
    table = TABLES[StoreKind.KNOWLEDGE].name
    query_norm = norm(vector)
    where = "owner = %s AND deleted = %s AND dimensions = %s AND embedding_norm > 0"
    params: list[Any] = [owner, False, len(vector)]
    if kind is not None:
        where += " AND kind = %s"
        params.append(kind)
    if connection.vendor == "postgresql":
        dot = "(SELECT SUM(a * b) FROM unnest(embedding, %s::double precision[]) AS v(a, b))"
        vector_param: Any = [float(x) for x in vector]
    else:
        connection.ensure_connection()
        # registered per connection; cheap and idempotent
        connection.connection.create_function("agentstream_dot", 2, _sqlite_dot, deterministic=True)
        dot = "agentstream_dot(embedding, %s)"
        vector_param = vector_to_db(vector, False)
    sql = (
        f"SELECT item_id, {dot} / (embedding_norm * %s) AS score FROM {table} "
        f"WHERE {where} ORDER BY score DESC, item_id LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [vector_param, query_norm, *params, k])
        return [Hit(str(item_id), float(score)) for item_id, score in cursor.fetchall() if score is not None]


def search_backend(connection: BaseDatabaseWrapper) -> str:
    """Which similarity search this database uses (``agentstatus`` shows it; workers log it)."""
    if connection.vendor == "postgresql":
        return "postgresql: exact cosine in SQL over double precision[] (pgvector is not used yet)"
    return f"{connection.vendor}: exact cosine by a registered SQL function"

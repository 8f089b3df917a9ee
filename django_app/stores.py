"""The agent stores on the Django database: the worker's ``StoreBackend`` and, for views,
``get_persistence_manager(user)``.

Every read filters by owner in ONE place (``owned``); the owner comes from the run (worker) or
from the authenticated user / session (views), never from a caller's argument. Writes from a run
are the run's events, merged at once with the projector's own merge (``projections.stores``).
The database work runs on one thread per backend (Django connections belong to a thread).
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.db import close_old_connections, connections, transaction
from django.db.models import Model, QuerySet

from agentstream.consumers.stores import Match
from agentstream.core.events import Event
from agentstream.core.ids import anonymous_owner, user_owner
from agentstream.core.records import StoreKind, StoreRecord, Version
from agentstream.django_app.models import KnowledgeItem, MemoryItem, Preference, Task
from agentstream.projections.similarity import search_backend, search_knowledge
from agentstream.projections.stores import StoreWriter

T = TypeVar("T")
log = logging.getLogger("agentstream.worker")

MODELS: dict[StoreKind, type[Model]] = {
    StoreKind.MEMORY: MemoryItem,
    StoreKind.PREFERENCE: Preference,
    StoreKind.TASK: Task,
    StoreKind.KNOWLEDGE: KnowledgeItem,
}
KEY_FIELD = {
    StoreKind.MEMORY: "key",
    StoreKind.PREFERENCE: "key",
    StoreKind.TASK: "task_id",
    StoreKind.KNOWLEDGE: "item_id",
}


def owned(kind: StoreKind, owner: str, database: str = "default") -> QuerySet[Any]:
    """The owner's live records of one store: the only way any code here reads them."""
    if not owner:
        raise ValueError("an owner is required to read a store")
    manager = MODELS[kind]._default_manager  # type: ignore[attr-defined]
    return manager.using(database).filter(owner=owner, deleted=False)  # type: ignore[no-any-return]


def record_from_row(kind: StoreKind, row: Any) -> StoreRecord:
    version = Version(row.version_us, row.version_run, row.version_seq)
    key = getattr(row, KEY_FIELD[kind])
    if kind in (StoreKind.MEMORY, StoreKind.PREFERENCE):
        return StoreRecord(kind, row.owner, key, version, value=row.value)
    if kind == StoreKind.TASK:
        fields = {
            "title": row.title,
            "status": row.status,
            "priority": row.priority,
            "depends_on": list(row.depends_on or []),
            "task_list": row.task_list,
            "notes": row.notes,
            "metadata": dict(row.metadata or {}),
        }
    else:
        fields = {
            "text": row.text,
            "kind": row.kind,
            "metadata": dict(row.metadata or {}),
            "embedding": row.embedding,
        }
    return StoreRecord(kind, row.owner, key, version, fields=fields)


# -- sync reads, shared by the worker's backend and the views --------------------------------------


def get_record(kind: StoreKind, owner: str, key: str, database: str = "default") -> StoreRecord | None:
    row = owned(kind, owner, database).filter(**{KEY_FIELD[kind]: key}).first()
    return None if row is None else record_from_row(kind, row)


def list_records(
    kind: StoreKind, owner: str, *, prefix: str = "", database: str = "default"
) -> builtins.list[StoreRecord]:
    rows = owned(kind, owner, database)
    if prefix:
        # SQLite's LIKE ignores ASCII case ("user." would find "User.x"): the query narrows, the
        # comparison here decides, as on PostgreSQL and in the in-memory twin
        rows = rows.filter(**{f"{KEY_FIELD[kind]}__startswith": prefix})
    found = (record_from_row(kind, r) for r in rows.order_by(KEY_FIELD[kind]))
    return [r for r in found if r.key.startswith(prefix)]


def search(
    owner: str, embedding: Sequence[float], *, k: int, kind: str | None = None, database: str = "default"
) -> builtins.list[Match]:
    if not owner:
        raise ValueError("an owner is required to search knowledge")
    hits = search_knowledge(connections[database], owner, embedding, k=k, kind=kind)
    rows = {
        r.item_id: r
        for r in owned(StoreKind.KNOWLEDGE, owner, database).filter(item_id__in=[h.item_id for h in hits])
    }
    return [
        Match(record_from_row(StoreKind.KNOWLEDGE, rows[h.item_id]), h.score)
        for h in hits
        if h.item_id in rows
    ]


def apply_events(events: Sequence[Event], database: str = "default") -> None:
    with transaction.atomic(using=database):
        StoreWriter(connections[database]).apply(events)


class DjangoStoreBackend:
    """The worker's ``StoreBackend``: the database through one thread of its own."""

    def __init__(self, database: str = "default") -> None:
        self.database = database
        self._search_logged = False
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agentstream-stores")

    async def _call(self, fn: Callable[[], T]) -> T:
        def run() -> T:
            close_old_connections()  # a connection the database dropped is replaced, not reused
            return fn()

        return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    async def apply(self, events: Sequence[Event]) -> None:
        await self._call(lambda: apply_events(events, self.database))

    async def get(self, kind: StoreKind, owner: str, key: str) -> StoreRecord | None:
        return await self._call(lambda: get_record(kind, owner, key, self.database))

    async def list(self, kind: StoreKind, owner: str, *, prefix: str = "") -> builtins.list[StoreRecord]:
        return await self._call(lambda: list_records(kind, owner, prefix=prefix, database=self.database))

    async def search(
        self, owner: str, embedding: Sequence[float], *, k: int, kind: str | None = None
    ) -> builtins.list[Match]:
        def logged_search() -> builtins.list[Match]:
            if not self._search_logged:  # on the database thread: the path is read from the catalog
                self._search_logged = True
                log.info("knowledge search: %s", search_backend(connections[self.database]))
            return search(owner, embedding, k=k, kind=kind, database=self.database)

        return await self._call(logged_search)

    def close(self) -> None:
        self._pool.submit(lambda: connections[self.database].close()).result()
        self._pool.shutdown()


class PersistenceManager:
    """The stores of one owner, for Django code outside runs (views, admin actions). Read-only:
    a change to what agents remember is an event of a run, so it replays."""

    def __init__(self, owner: str) -> None:
        if not owner:
            raise ValueError("a PersistenceManager needs an owner ('user:<pk>' or 'anon:<session id>')")
        self.owner = owner

    def memory(self, prefix: str = "") -> dict[str, Any]:
        return {r.key: r.value for r in list_records(StoreKind.MEMORY, self.owner, prefix=prefix)}

    def preferences(self) -> dict[str, Any]:
        return {r.key: r.value for r in list_records(StoreKind.PREFERENCE, self.owner)}

    def tasks(self, task_list: str | None = None) -> QuerySet[Any]:
        rows = owned(StoreKind.TASK, self.owner)
        if task_list is not None:
            rows = rows.filter(task_list=task_list)
        return rows.order_by("-priority", "task_id")

    def knowledge(self, kind: str | None = None) -> QuerySet[Any]:
        rows = owned(StoreKind.KNOWLEDGE, self.owner)
        return rows if kind is None else rows.filter(kind=kind)

    def search_knowledge(
        self, embedding: Sequence[float], *, k: int = 5, kind: str | None = None
    ) -> builtins.list[Match]:
        return search(self.owner, embedding, k=k, kind=kind)


def get_persistence_manager(user: Any = None, *, session_id: str | None = None) -> PersistenceManager:
    """The stores of an authenticated user, or of an anonymous session (``session_id``)."""
    if user is not None and getattr(user, "is_authenticated", False):
        return PersistenceManager(user_owner(user.pk))
    if session_id:
        return PersistenceManager(anonymous_owner(session_id))
    raise ValueError("get_persistence_manager needs an authenticated user or an anonymous session id")

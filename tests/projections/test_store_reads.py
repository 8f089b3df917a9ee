"""Reads of the store tables answer the same on SQLite and PostgreSQL as the in-memory twin."""

from __future__ import annotations

import functools

import pytest

from agentstream.consumers.stores import InMemoryStoreBackend
from agentstream.core.events import EventType
from agentstream.core.records import StoreKind
from agentstream.django_app.stores import PersistenceManager, list_records
from tests.projections.conftest import in_thread
from tests.projections.test_stores import ALICE, apply, ev

pytestmark = pytest.mark.django_db(databases=["default", "embedded"], transaction=True)

KEYS = ["user.name", "User.Name", "USER.x", "user_a", "userXa", "us%er", "user.%"]


async def test_a_key_prefix_is_case_sensitive_and_literal_on_every_database(database: str) -> None:
    events = [
        ev("r1", n, EventType.MEMORY_SET, StoreKind.MEMORY, ALICE, k, 100, value=n)
        for n, k in enumerate(KEYS, 1)
    ]
    twin = InMemoryStoreBackend()
    await twin.apply(events)
    await in_thread(apply, database, events)
    for prefix in ("user.", "User.", "user_", "us%", "user.%", "U"):
        expected = [r.key for r in await twin.list(StoreKind.MEMORY, ALICE, prefix=prefix)]
        read = functools.partial(list_records, StoreKind.MEMORY, ALICE, prefix=prefix, database=database)
        found = await in_thread(read)
        assert [r.key for r in found] == expected, prefix
        assert expected == sorted(k for k in KEYS if k.startswith(prefix))
    if database == "default":
        memory = await in_thread(lambda: PersistenceManager(ALICE).memory("user."))
        assert list(memory) == ["user.%", "user.name"]

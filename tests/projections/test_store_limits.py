"""What the store tables cannot hold (PostgreSQL: NUL in text, a priority past 32 bits; both
engines: JSON nested past the projector's encoder) is refused before it is recorded, so it never
fails the worker's write-through after the event is in the run, nor stalls the projection; events
recorded before these checks are stored as near as the tables allow."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agentstream.consumers.context import RunContext
from agentstream.core.errors import InvalidRecord
from agentstream.core.events import Event, EventType
from agentstream.core.records import STORE_TYPES, StoreKind, store_payload
from agentstream.core.store import EventStore, SubmitRequest
from agentstream.django_app.stores import DjangoStoreBackend, get_record, list_records
from agentstream.projections.projector import Projector, ProjectorOptions
from agentstream.projections.stores import StoresProjection
from tests.projections.conftest import AGENT, claim, in_thread
from tests.projections.test_stores import ALICE, apply

pytestmark = pytest.mark.django_db(databases=["default", "embedded"], transaction=True)


def nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


async def test_a_store_write_the_tables_cannot_hold_is_refused_before_it_is_recorded(
    store: EventStore, database: str
) -> None:
    backend = DjangoStoreBackend(database)
    try:
        submitted = await store.submit(SubmitRequest(agent_key=AGENT, owner=ALICE))
        ctx = RunContext(store, await claim(store, submitted.run_id), stores=backend)
        refused: list[Callable[[], Awaitable[Any]]] = [
            lambda: ctx.memory.set("a\x00b", 1),
            lambda: ctx.memory.get("a\x00b"),
            lambda: ctx.preferences.delete("\x00"),
            lambda: ctx.memory.set("deep", nested(300)),
            lambda: ctx.tasks.add("big", priority=2**40),
            lambda: ctx.tasks.add("title\x00"),
            lambda: ctx.tasks.add("notes", notes="a\x00"),
            lambda: ctx.tasks.add("list", task_list="a\x00"),
            lambda: ctx.tasks.add("meta", metadata={"a": nested(300)}),
            lambda: ctx.tasks.get("t\x00"),
            lambda: ctx.knowledge.add("text\x00"),
            lambda: ctx.knowledge.add("kind", kind="fact\x00"),
            lambda: ctx.knowledge.add("meta", metadata={"a": nested(300)}),
        ]
        for call in refused:
            with pytest.raises(InvalidRecord):
                await call()
        assert await ctx.knowledge.search([1.0, 0.0], kind="\x00") == []
        assert not [e for e in await store.read_run(ctx.run_id) if e.type in STORE_TYPES]
        # the run writes on, and what the checks let through is stored
        await ctx.memory.set("deep", nested(200))
        await ctx.memory.set("nul inside a value", {"a\x00": "b\x00"})
        task = await ctx.tasks.add("top", priority=2**31 - 1)
        assert await ctx.memory.get("deep") == nested(200)
        assert (await ctx.tasks.get(task.task_id)).priority == 2**31 - 1  # type: ignore[union-attr]
    finally:
        await in_thread(backend.close)


def old(seq: int, etype: EventType, store: StoreKind, key: str, **body: Any) -> Event:
    return Event("r-old", seq, etype, store_payload(store, ALICE, key, 100 + seq, **body))


TASK = {"status": "not_started", "priority": 1, "depends_on": [], "task_list": "default", "notes": ""}
RECORDED_BEFORE_THE_CHECKS = [
    old(1, EventType.MEMORY_SET, StoreKind.MEMORY, "a\x00b", value=1),
    old(2, EventType.MEMORY_SET, StoreKind.MEMORY, "deep", value=nested(300)),
    old(3, EventType.TASK_UPSERTED, StoreKind.TASK, "t1", **{**TASK, "title": "a\x00", "metadata": {}}),
    old(4, EventType.TASK_UPSERTED, StoreKind.TASK, "t2", **{**TASK, "title": "b", "priority": 2**40,
        "metadata": {"x": nested(300)}}),
    old(5, EventType.KNOWLEDGE_ADDED, StoreKind.KNOWLEDGE, "k1", text="a\x00", kind="f\x00", metadata={},
        embedding=None),
]  # fmt: skip


async def test_store_events_recorded_before_the_checks_never_stall_the_projection(
    store: EventStore, database: str
) -> None:
    await in_thread(apply, database, RECORDED_BEFORE_THE_CHECKS)  # the write-through's and replay's path
    assert (await in_thread(get_record, StoreKind.MEMORY, ALICE, "a\ufffdb", database)).value == 1  # type: ignore[union-attr]
    assert (await in_thread(get_record, StoreKind.MEMORY, ALICE, "deep", database)).value is None  # type: ignore[union-attr]
    tasks = {
        r.key: r.fields
        for r in await in_thread(lambda: list_records(StoreKind.TASK, ALICE, database=database))
    }
    assert tasks["t1"]["title"] == "a\ufffd"
    assert (tasks["t2"]["priority"], tasks["t2"]["metadata"]) == (2**31 - 1, {})
    item = await in_thread(get_record, StoreKind.KNOWLEDGE, ALICE, "k1", database)
    assert item is not None and (item.fields["text"], item.fields["kind"]) == ("a\ufffd", "f\ufffd")

    # the projector, from the log: one batch holding such an event commits and is acknowledged
    await store.owner_event(ALICE, EventType.MEMORY_SET, store_payload(StoreKind.MEMORY, ALICE, "x\x00", 1))
    projector = Projector(
        store.redis, store.keys, StoresProjection(), database=database, options=ProjectorOptions(block_ms=50)
    )
    await projector.run(burst=True)
    assert projector.failures == 0
    assert await in_thread(get_record, StoreKind.MEMORY, ALICE, "x\ufffd", database) is not None

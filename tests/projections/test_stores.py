"""The agent stores' tables on PostgreSQL and SQLite: the merge (order- and redelivery-proof),
similarity search in the database, the worker's write-through, and replay from the archive."""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest
from django.db import connections, transaction

from agentstream.consumers.context import RunContext
from agentstream.consumers.stores import now_us
from agentstream.core.events import Event, EventType
from agentstream.core.ids import anonymous_owner, user_owner
from agentstream.core.records import StoreKind, store_payload
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, SubmitRequest
from agentstream.django_app.stores import DjangoStoreBackend, get_record, search
from agentstream.projections.projection import ReadModelProjection
from agentstream.projections.projector import Projector, ProjectorOptions
from agentstream.projections.replay import replay_archive
from agentstream.projections.similarity import search_knowledge
from agentstream.projections.stores import TABLES, StoresProjection, StoreWriter
from tests.projections.conftest import AGENT, claim, in_thread, projector_for

pytestmark = pytest.mark.django_db(databases=["default", "embedded"], transaction=True)

ALICE = user_owner(1)
BOB = user_owner(2)


def snapshot(database: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every store row, without the surrogate id (a replay renumbers it)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with connections[database].cursor() as cursor:
        for table in TABLES.values():
            cursor.execute(f"SELECT * FROM {table.name}")
            names = [c[0] for c in cursor.description]
            found = [
                tuple(v for n, v in zip(names, row, strict=True) if n != "id") for row in cursor.fetchall()
            ]
            out[table.name] = sorted(found, key=repr)
    return out


def apply(database: str, events: list[Event]) -> None:
    with transaction.atomic(using=database):
        StoreWriter(connections[database]).apply(events)


def wipe(database: str) -> None:
    StoreWriter(connections[database]).reset()


def ev(
    run: str, seq: int, etype: EventType, store: StoreKind, owner: str, key: str, at: int, **body: Any
) -> Event:
    return Event(run, seq, etype, store_payload(store, owner, key, at, **body))


HISTORY = [
    ev("r1", 1, EventType.MEMORY_SET, StoreKind.MEMORY, ALICE, "city", 100, value="Lyon"),
    ev("r2", 1, EventType.MEMORY_SET, StoreKind.MEMORY, ALICE, "city", 200, value="Paris"),
    ev("r2", 2, EventType.MEMORY_DELETED, StoreKind.MEMORY, ALICE, "pets", 200),
    ev("r1", 2, EventType.MEMORY_SET, StoreKind.MEMORY, ALICE, "pets", 150, value=["cat"]),
    ev("r3", 1, EventType.MEMORY_SET, StoreKind.MEMORY, BOB, "city", 50, value="Oslo"),
    ev("r1", 3, EventType.PREFERENCE_SET, StoreKind.PREFERENCE, ALICE, "tone", 100, value={"x": 1}),
    ev("r1", 4, EventType.TASK_UPSERTED, StoreKind.TASK, ALICE, "t1", 100, title="a", status="not_started",
       priority=2, depends_on=[], task_list="default", notes="", metadata={}),
    ev("r2", 3, EventType.TASK_UPSERTED, StoreKind.TASK, ALICE, "t1", 300, title="a", status="complete",
       priority=2, depends_on=[], task_list="default", notes="done", metadata={"by": "r2"}),
    ev("r1", 5, EventType.KNOWLEDGE_ADDED, StoreKind.KNOWLEDGE, ALICE, "k1", 100, text="north", kind="fact",
       metadata={}, embedding=[0.0, 1.0]),
    ev("r1", 6, EventType.KNOWLEDGE_ADDED, StoreKind.KNOWLEDGE, ALICE, "k2", 100, text="east", kind="fact",
       metadata={}, embedding=[1.0, 0.0]),
]  # fmt: skip


async def test_store_rows_are_the_same_whatever_the_order_or_redelivery_of_their_events(
    database: str,
) -> None:
    await in_thread(apply, database, HISTORY)
    expected = await in_thread(snapshot, database)
    for seed in range(4):
        await in_thread(wipe, database)
        shuffled = HISTORY * 2
        random.Random(seed).shuffle(shuffled)
        for half in (shuffled[: len(shuffled) // 2], shuffled[len(shuffled) // 2 :]):  # two batches
            await in_thread(apply, database, half)
        assert await in_thread(snapshot, database) == expected
    city = await in_thread(get_record, StoreKind.MEMORY, ALICE, "city", database)
    assert city is not None and city.value == "Paris"
    assert (
        await in_thread(get_record, StoreKind.MEMORY, ALICE, "pets", database) is None
    )  # the delete is newer
    task = await in_thread(get_record, StoreKind.TASK, ALICE, "t1", database)
    assert task is not None and task.fields["status"] == "complete"
    bob_city = await in_thread(get_record, StoreKind.MEMORY, BOB, "city", database)
    assert bob_city is not None and bob_city.value == "Oslo"


async def test_similarity_search_ranks_in_the_database_and_only_the_owners_items(database: str) -> None:
    extra = [
        ev("r4", 1, EventType.KNOWLEDGE_ADDED, StoreKind.KNOWLEDGE, ALICE, "k3", 100, text="north-east",
           kind="summary", metadata={}, embedding=[1.0, 1.0]),
        ev("r4", 2, EventType.KNOWLEDGE_ADDED, StoreKind.KNOWLEDGE, ALICE, "k4", 100, text="3d", kind="fact",
           metadata={}, embedding=[0.0, 1.0, 0.0]),
        ev("r5", 1, EventType.KNOWLEDGE_ADDED, StoreKind.KNOWLEDGE, BOB, "b1", 100, text="bob's north",
           kind="fact", metadata={}, embedding=[0.0, 1.0]),
        ev("r4", 3, EventType.KNOWLEDGE_DELETED, StoreKind.KNOWLEDGE, ALICE, "k2", 200),
    ]  # fmt: skip
    await in_thread(apply, database, [*HISTORY, *extra])
    hits = await in_thread(lambda: search_knowledge(connections[database], ALICE, [0.1, 1.0], k=5))
    assert [h.item_id for h in hits] == ["k1", "k3"]  # k2 deleted, k4 of another dimension, b1 bob's
    assert hits[0].score == pytest.approx(0.995, abs=1e-3)
    matches = await in_thread(lambda: search(ALICE, [1.0, 0.2], k=1, kind="summary", database=database))
    assert [(m.record.key, m.record.fields["text"]) for m in matches] == [("k3", "north-east")]
    assert await in_thread(lambda: search(user_owner(99), [0.0, 1.0], k=5, database=database)) == []


async def test_worker_and_owner_writes_are_readable_at_once_and_replay_from_the_archive_reproduces_them(
    store: EventStore, database: str, store_settings: Settings
) -> None:
    backend = DjangoStoreBackend(database)
    try:
        contexts = []
        for owner in (ALICE, ALICE, anonymous_owner("s")):
            submitted = await store.submit(SubmitRequest(agent_key=AGENT, owner=owner))
            contexts.append(RunContext(store, await claim(store, submitted.run_id), stores=backend))
        first, second, anon = contexts
        await first.memory.set("city", "Lyon")
        assert await second.memory.get("city") == "Lyon"  # the owner's next run reads it, no projector
        await second.memory.set("city", "Paris")
        await first.preferences.set("units", "metric")
        plan = await first.tasks.add("plan", priority=3)
        await second.tasks.add("build", depends_on=[plan.task_id])
        await second.tasks.set_status(plan.task_id, "complete")
        await anon.knowledge.add("a fact", embedding=[0.5, 0.5], kind="fact")
        await first.knowledge.add("north", embedding=[0.0, 1.0], item_id="n")
        await second.knowledge.delete("n")
        assert await anon.memory.get("city") is None
        # the owner forgets a memory from outside any run (the API's path): its own stream
        forget = store_payload(StoreKind.PREFERENCE, ALICE, "units", now_us(), value="imperial")
        await backend.apply([await store.owner_event(ALICE, EventType.PREFERENCE_SET, forget)])
        assert await first.preferences.get("units") == "imperial"
        live = await in_thread(snapshot, database)

        # the projector re-applies what the worker already wrote: nothing changes
        await projector_for(store, database).run(burst=True)  # the archive
        stores = Projector(
            store.redis,
            store.keys,
            StoresProjection(),
            database=database,
            options=ProjectorOptions(block_ms=50),
        )
        await stores.run(burst=True)
        assert await in_thread(snapshot, database) == live

        await in_thread(wipe, database)
        assert all(not rows for rows in (await in_thread(snapshot, database)).values())
        await in_thread(
            functools.partial(replay_archive, [StoresProjection()], database, settings=store_settings)
        )
        assert await in_thread(snapshot, database) == live
        assert (await second.tasks.get(plan.task_id)).status == "complete"  # type: ignore[union-attr]
    finally:
        await in_thread(backend.close)


def test_the_read_model_projection_leaves_store_events_to_the_stores_projection() -> None:
    assert ReadModelProjection.event_types is None  # it archives them (replay reads the archive)
    assert StoresProjection().wants(EventType.MEMORY_SET)
    assert not StoresProjection().wants(EventType.ASSISTANT_MESSAGE)


async def test_verify_sees_no_drift_with_branch_switches_and_owner_streams_in_the_logs(
    store: EventStore, database: str
) -> None:
    from agentstream.projections.verify import compare, log_events

    conv = await store.create_conversation(ALICE, agent_key=AGENT)
    await store.switch_branch(conv, ALICE, "some-branch")
    payload = store_payload(StoreKind.MEMORY, ALICE, "city", 1, value="Lyon")
    await store.owner_event(ALICE, EventType.MEMORY_SET, payload)
    await projector_for(store, database).run(burst=True)
    events = [e async for e in log_events(store.redis, store.keys)]
    report = await in_thread(compare, events, database)
    assert report.ok, report.drift
    assert report.conversations_checked == 1  # the owner's stream is not a conversation

    def branch() -> str | None:
        from agentstream.django_app.models import Conversation

        return Conversation.objects.using(database).get(id=conv).active_branch_id

    assert await in_thread(branch) == "some-branch"

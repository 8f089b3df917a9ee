"""The owner's stores through RunContext (``ctx.memory`` / ``preferences`` / ``tasks`` /
``knowledge``) on the in-memory backend, over fakeredis and real Redis: scoping, fencing,
tasks' rules, similarity search, and replay of the run's events reproducing the records."""

from __future__ import annotations

import random

import pytest

from agentstream.consumers.context import RunContext
from agentstream.consumers.errors import StoresNotConfigured
from agentstream.consumers.stores import InMemoryStoreBackend
from agentstream.core.errors import FencedOut, InvalidRecord
from agentstream.core.ids import anonymous_owner, user_owner
from agentstream.core.records import STORE_TYPES, StoreKind, TaskStatus
from agentstream.core.store import Claim, EventStore, SubmitRequest
from tests.projections.conftest import AGENT, claim

ALICE = user_owner(1)
BOB = user_owner(2)
ANON = anonymous_owner("sess-a")


async def context(store: EventStore, owner: str, backend: InMemoryStoreBackend | None) -> RunContext:
    submitted = await store.submit(SubmitRequest(agent_key=AGENT, owner=owner))
    return RunContext(store, await claim(store, submitted.run_id), stores=backend)


async def test_memory_set_get_delete_and_items_are_the_owners_and_recorded_as_run_events(
    store: EventStore,
) -> None:
    backend = InMemoryStoreBackend()
    ctx = await context(store, ALICE, backend)
    await ctx.memory.set("city", "Lyon")
    await ctx.memory.set("pets", ["cat"])
    await ctx.memory.set("city", "Paris")
    await ctx.memory.delete("pets")
    assert await ctx.memory.get("city") == "Paris"
    assert await ctx.memory.get("pets", "none") == "none"
    assert await ctx.memory.items() == {"city": "Paris"}
    recorded = [e for e in await store.read_run(ctx.run_id) if e.type in STORE_TYPES]
    assert [e.type for e in recorded] == ["memory.set", "memory.set", "memory.set", "memory.deleted"]
    assert {e.payload["owner"] for e in recorded} == {ALICE}


async def test_no_store_call_reads_or_writes_another_owners_records(store: EventStore) -> None:
    backend = InMemoryStoreBackend()
    alice = await context(store, ALICE, backend)
    bob = await context(store, BOB, backend)
    anon = await context(store, ANON, backend)
    await alice.memory.set("secret", 1)
    await alice.preferences.set("tone", "dry")
    task = await alice.tasks.add("alice's task")
    item = await alice.knowledge.add("alice's fact", embedding=[1.0, 0.0])
    for other in (bob, anon):
        assert await other.memory.get("secret") is None
        assert await other.memory.items() == {}
        assert await other.preferences.items() == {}
        assert await other.tasks.get(task.task_id) is None
        assert await other.tasks.list() == []
        assert await other.knowledge.get(item) is None
        assert await other.knowledge.search([1.0, 0.0]) == []
        # writing the same keys makes the other owner's own records, never touches alice's
        await other.memory.set("secret", "mine")
        await other.memory.delete("secret")
        await other.knowledge.delete(item)
        with pytest.raises(InvalidRecord):
            await other.tasks.update(task.task_id, status="complete")
    assert await alice.memory.get("secret") == 1
    assert (await alice.tasks.get(task.task_id)).status is TaskStatus.NOT_STARTED  # type: ignore[union-attr]
    assert [m.record.key for m in await alice.knowledge.search([1.0, 0.0])] == [item]


async def test_an_agent_cannot_emit_store_events_itself(store: EventStore) -> None:
    ctx = await context(store, ALICE, InMemoryStoreBackend())
    for kind in sorted(STORE_TYPES):
        with pytest.raises(ValueError, match="written by the run's stores"):
            await ctx.emit(kind, {"owner": BOB, "key": "x", "at_us": 1, "value": 1})


async def test_a_zombie_attempts_store_write_is_fenced_and_applies_nothing(store: EventStore) -> None:
    backend = InMemoryStoreBackend()
    ctx = await context(store, ALICE, backend)
    await ctx.memory.set("before", 1)
    job = (await store.redis.hget(store.keys.run_state(ctx.run_id), "job")).decode()
    takeover = await store.begin_attempt(ctx.run_id, job, "thief", AGENT)  # what a reclaim does
    assert isinstance(takeover, Claim)
    with pytest.raises(FencedOut):
        await ctx.memory.set("after", 2)
    with pytest.raises(FencedOut):
        await ctx.tasks.add("zombie task")
    assert await ctx.memory.items() == {"before": 1}
    assert await ctx.tasks.list() == []
    assert not [
        e for e in await store.read_run(ctx.run_id) if e.attempt == 1 and e.payload.get("key") == "after"
    ]


async def test_a_worker_without_a_store_backend_says_how_to_get_one(store: EventStore) -> None:
    ctx = await context(store, ALICE, None)
    with pytest.raises(StoresNotConfigured, match="runagent"):
        await ctx.memory.get("x")


async def test_a_run_without_an_owner_has_no_stores(store: EventStore) -> None:
    ctx = await context(store, "", InMemoryStoreBackend())
    with pytest.raises(InvalidRecord, match="no owner"):
        await ctx.memory.set("x", 1)


async def test_tasks_have_states_priorities_and_dependencies(store: EventStore) -> None:
    ctx = await context(store, ALICE, InMemoryStoreBackend())
    tasks = ctx.tasks
    plan = await tasks.add("plan", priority=1, task_id="plan")
    build = await tasks.add("build", priority=5, depends_on=["plan"], task_id="build")
    await tasks.add("ship", priority=9, depends_on=["build", "plan"], task_id="ship")
    await tasks.add("other list", task_list="later", task_id="later")
    assert [t.task_id for t in await tasks.list()] == ["ship", "build", "plan", "later"]
    assert [t.task_id for t in await tasks.list("later")] == ["later"]
    assert [t.task_id for t in await tasks.ready("default")] == ["plan"]
    await tasks.set_status(plan.task_id, "in_progress")
    assert await tasks.ready("default") == []
    await tasks.set_status(plan.task_id, "complete")
    assert [t.task_id for t in await tasks.ready("default")] == ["build"]
    await tasks.set_status(build.task_id, "cancelled")
    assert [t.task_id for t in await tasks.ready("default")] == ["ship"]
    assert [t.task_id for t in await tasks.list(status="cancelled")] == ["build"]
    with pytest.raises(InvalidRecord, match="not one of"):
        await tasks.set_status("ship", "done")
    with pytest.raises(InvalidRecord, match="unknown task"):
        await tasks.add("orphan", depends_on=["nope"])
    with pytest.raises(InvalidRecord, match="depend on itself"):
        await tasks.update("plan", depends_on=["ship"])  # ship -> build -> plan -> ship
    with pytest.raises(InvalidRecord, match="unknown task field"):
        await tasks.update("plan", colour="red")
    await tasks.delete("later")
    assert await tasks.get("later") is None


async def test_knowledge_search_ranks_by_cosine_and_filters_by_kind(store: EventStore) -> None:
    ctx = await context(store, ALICE, InMemoryStoreBackend())
    k = ctx.knowledge
    await k.add("north", embedding=[0.0, 1.0], item_id="n")
    await k.add("north-east", embedding=[1.0, 1.0], item_id="ne", kind="summary")
    await k.add("east", embedding=[1.0, 0.0], item_id="e")
    await k.add("three dims never match two", embedding=[1.0, 0.0, 0.0], item_id="3d")
    await k.add("no embedding", item_id="plain")
    hits = await k.search([0.1, 1.0], k=2)
    assert [h.record.key for h in hits] == ["n", "ne"]
    assert hits[0].score == pytest.approx(0.995, abs=1e-3)
    assert [h.record.key for h in await k.search([0.1, 1.0], kind="summary")] == ["ne"]
    with pytest.raises(InvalidRecord):
        await k.search([0.0, 0.0])
    with pytest.raises(InvalidRecord):
        await k.add("bad", embedding=[float("nan")])
    for out_of_float4 in ([1e19, 0.0], [1e-13, 0.0]):  # pgvector ranks in float4
        with pytest.raises(InvalidRecord, match=r"length must be within 1e-12\.\.1e\+18; normalise it"):
            await k.add("bad", embedding=out_of_float4)


async def test_replaying_the_runs_events_in_any_order_reproduces_the_records(store: EventStore) -> None:
    live = InMemoryStoreBackend()
    first = await context(store, ALICE, live)
    second = await context(store, ALICE, live)
    await first.memory.set("k", 1)
    await second.memory.set("k", 2)  # a later write of another run of the same owner
    await first.memory.set("gone", 1)
    await second.memory.delete("gone")
    await first.tasks.add("t", task_id="t")
    await second.tasks.set_status("t", "complete")
    await first.knowledge.add("fact", embedding=[1.0, 2.0], item_id="f")
    events = [e for run in (first, second) for e in await store.read_run(run.run_id) if e.type in STORE_TYPES]
    for seed in range(5):
        shuffled = events * 2
        random.Random(seed).shuffle(shuffled)
        replayed = InMemoryStoreBackend()
        await replayed.apply(shuffled)
        assert replayed.records == live.records
    assert await second.memory.items() == {"k": 2}
    assert live.records[(StoreKind.TASK, ALICE, "t")].fields["status"] == "complete"

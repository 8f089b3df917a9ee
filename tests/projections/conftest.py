"""Fixtures for the projection contract: events made by the real store scripts, projected into
PostgreSQL (``default``) and SQLite (``embedded``)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from django.db import connections

from agentstream.core.events import EventType, NewEvent
from agentstream.core.ids import anonymous_owner, user_owner
from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.settings import Settings
from agentstream.core.store import Claim, EventStore, SubmitRequest
from agentstream.projections.projection import ReadModelProjection
from agentstream.projections.projector import Projector, ProjectorOptions
from tests.services import POSTGRES_UP, require

T = TypeVar("T")
AGENT = "echo"
DATABASES = ["default", "embedded"]


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest) -> str:
    """Every contract test runs on PostgreSQL (``default``) and SQLite (``embedded``)."""
    if request.param == "default":
        require("PostgreSQL", POSTGRES_UP)
    return str(request.param)


@pytest.fixture
def store_settings(store: EventStore, redis_url: str) -> Settings:
    """The test store's settings with its Redis: what a replay that reads the logs is given."""
    return store.settings.with_overrides(REDIS_URL=redis_url)


def projector_for(store: EventStore, database: str, **options: Any) -> Projector:
    return Projector(
        store.redis,
        store.keys,
        ReadModelProjection(),
        database=database,
        options=ProjectorOptions(**{"block_ms": 50, **options}),
    )


async def claim(store: EventStore, run_id: str, worker: str = "w1") -> Claim:
    """What a worker does: XREADGROUP the run's job, then begin the attempt."""
    partition = store.keys.run_partition(run_id)
    queue = store.keys.queue(partition, AGENT)
    await store.ensure_groups([AGENT])
    reply = await store.redis.xreadgroup(WORKERS_GROUP, worker, {queue: ">"}, count=100)
    for _, entries in reply or []:
        for job_id, fields in entries:
            if fields[b"r"].decode() == run_id:
                claimed = await store.begin_attempt(run_id, job_id.decode(), worker, AGENT)
                assert isinstance(claimed, Claim), claimed
                return claimed
    # the job may sit in this worker's pending list from an earlier read
    pending = await store.redis.xreadgroup(WORKERS_GROUP, worker, {queue: "0"}, count=1000)
    for _, entries in pending or []:
        for job_id, fields in entries:
            if fields and fields[b"r"].decode() == run_id:
                claimed = await store.begin_attempt(run_id, job_id.decode(), worker, AGENT)
                assert isinstance(claimed, Claim), claimed
                return claimed
    raise AssertionError(f"no job for run {run_id}")


@dataclass
class Workload:
    run_ids: list[str] = field(default_factory=list)
    conversation_ids: list[str] = field(default_factory=list)


async def make_workload(store: EventStore, *, runs: int = 12, seed: int = 7) -> Workload:
    """Runs of every outcome, in and out of conversations, with retries, tool calls, deltas,
    checkpoints, idempotency keys, cancels, and conversation updates and deletes."""
    rng = random.Random(seed)
    work = Workload()
    owners = [user_owner(1), anonymous_owner("sess-a")]
    for i in range(2):
        conv = await store.create_conversation(
            owners[i], agent_key=AGENT, title=f"chat {i}", metadata={"i": i}
        )
        work.conversation_ids.append(conv)
    await store.update_conversation(work.conversation_ids[0], owners[0], title="renamed", metadata={"k": 1})
    for i in range(runs):
        owner = owners[i % 2]
        conv = work.conversation_ids[i % 2] if i % 3 else None
        result = await store.submit(
            SubmitRequest(
                agent_key=AGENT,
                owner=owner,
                messages=[{"role": "user", "content": f"hello {i}"}],
                params={"n": i},
                metadata={"i": i},
                conversation_id=conv,
                idempotency_key=f"key-{seed}-{i}" if i % 4 == 0 else None,
                max_attempts=3,
            )
        )
        work.run_ids.append(result.run_id)
        if conv:
            # conversations run one at a time (policy enqueue): finish this one before the next
            pass
        outcome = i % 5
        if outcome == 4 and conv is None:
            await store.cancel(result.run_id, owner=owner, reason="changed my mind")  # queued: at once
            continue
        c = await claim(store, result.run_id)
        events = [
            NewEvent(EventType.ASSISTANT_DELTA, {"delta": "he"}),
            NewEvent(EventType.TOOL_CALL, {"id": "t1", "name": "search", "arguments": {"q": i}}),
            NewEvent(EventType.TOOL_RESULT, {"id": "t1", "name": "search", "result": [1, 2]}),
            NewEvent(EventType.STATE_CHECKPOINT, {"state": {"step": i}}),
            NewEvent(EventType.ASSISTANT_MESSAGE, {"role": "assistant", "content": f"answer {i}"}),
        ]
        await store.append_many(result.run_id, c.attempt, events[: rng.randint(1, len(events))])
        if outcome == 1:
            retry = await store.schedule_retry(result.run_id, c.attempt, 0, {"type": "Boom", "message": "x"})
            assert retry.retrying
            await store.promote_due(store.keys.run_partition(result.run_id))
            c = await claim(store, result.run_id)
        if outcome == 2:
            await store.finish(
                result.run_id, c.attempt, EventType.RUN_FAILED,
                {"error": {"type": "ValueError", "message": "bad", "retriable": False}},
            )  # fmt: skip
        elif outcome == 3:
            await store.cancel(result.run_id, owner=owner, reason="stop")
            await store.finish(result.run_id, c.attempt, EventType.RUN_CANCELLED, {"reason": "stop"})
        else:
            await store.finish(
                result.run_id,
                c.attempt,
                EventType.RUN_SUCCEEDED,
                {
                    "output": {"text": f"answer {i}"},
                    "final_messages": [{"role": "assistant", "content": f"answer {i}"}],
                    "usage": {"total_tokens": i},
                },
            )
    await store.delete_conversation(work.conversation_ids[1], owners[1])
    return work


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run sync DB code off the event loop, on a connection of its own that is closed after."""

    def call() -> T:
        try:
            return fn(*args)
        finally:
            for conn in connections.all(initialized_only=True):
                conn.close()

    return await asyncio.to_thread(call)


def rows(database: str) -> dict[str, Sequence[dict[str, Any]]]:
    """The read-models as plain dicts, sorted, for comparing two databases or two runs."""
    from agentstream.django_app.models import Checkpoint, Conversation, ConversationEvent, Event, Run

    def dump(model: Any, order: Sequence[str], exclude: Sequence[str] = ()) -> list[dict[str, Any]]:
        out = []
        for obj in model.objects.using(database).order_by(*order):
            row = {
                f.attname: getattr(obj, f.attname)
                for f in model._meta.concrete_fields
                if f.attname not in exclude
            }
            out.append(row)
        return out

    return {
        "runs": dump(Run, ["id"]),
        "conversations": dump(Conversation, ["id"]),
        "events": dump(Event, ["run_id", "seq"], exclude=["id"]),
        "conversation_events": dump(ConversationEvent, ["conversation_id", "seq"], exclude=["id"]),
        "checkpoints": dump(Checkpoint, ["run_id", "seq"], exclude=["id"]),
    }

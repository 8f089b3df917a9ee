"""The read-model projection contract, on fakeredis and real Redis, PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from typing import Any

import pytest
from django.db import connections, transaction

from agentstream.core.events import Event
from agentstream.core.ids import partition_of, user_owner
from agentstream.core.store import EventStore, SubmitRequest
from agentstream.projections.projection import ReadModelProjection
from agentstream.projections.verify import compare, log_events, verify_log
from tests.projections.conftest import AGENT, in_thread, make_workload, projector_for, rows

pytestmark = pytest.mark.django_db(databases=["default", "embedded"], transaction=True)


async def all_log_events(store: EventStore) -> list[Event]:
    return [e async for e in log_events(store.redis, store.keys)]


def apply_batches(database: str, batches: list[list[Event]]) -> None:
    projection = ReadModelProjection()
    for batch in batches:
        with transaction.atomic(using=database):
            projection.handle(batch, connections[database])


def wipe(database: str) -> None:
    with connections[database].cursor() as cursor:
        for table in ("run", "conversation", "event", "conversationevent", "checkpoint"):
            cursor.execute(f"DELETE FROM agentstream_{table}")


async def test_projected_rows_match_a_fresh_fold_of_the_log(store: EventStore, database: str) -> None:
    work = await make_workload(store)
    projector = projector_for(store, database)
    await projector.run(burst=True)

    report = await verify_log(store.redis, store.keys, database)

    assert report.drift == ()
    assert report.runs_checked == len(work.run_ids)
    assert report.conversations_checked == len(work.conversation_ids)


async def test_a_run_row_carries_input_output_usage_and_timestamps(store: EventStore, database: str) -> None:
    from agentstream.django_app.models import Run

    work = await make_workload(store, runs=1)
    await projector_for(store, database).run(burst=True)

    run = await in_thread(lambda: Run.objects.using(database).get(id=work.run_ids[0]))
    assert run.status == "succeeded"
    assert run.input == {"messages": [{"role": "user", "content": "hello 0"}], "params": {"n": 0}}
    assert run.output == {"text": "answer 0"}
    assert run.usage == {"total_tokens": 0}
    assert run.owner == "user:1" and run.user_id == 1 and run.anonymous_session_id is None
    assert run.idempotency_key == "key-7-0"
    assert run.attempt == 1 and run.max_attempts == 3
    assert run.created_at and run.started_at and run.finished_at
    assert run.created_at <= run.started_at <= run.finished_at


async def test_conversations_count_their_runs_and_record_renames_and_deletes(
    store: EventStore, database: str
) -> None:
    from agentstream.django_app.models import Conversation, Run

    work = await make_workload(store)
    await projector_for(store, database).run(burst=True)

    first = await in_thread(lambda: Conversation.objects.using(database).get(id=work.conversation_ids[0]))
    second = await in_thread(lambda: Conversation.objects.using(database).get(id=work.conversation_ids[1]))
    assert first.title == "renamed" and first.metadata == {"k": 1} and first.deleted_at is None
    assert second.deleted_at is not None and second.anonymous_session_id == "sess-a"
    for conv in (first, second):
        count = await in_thread(Run.objects.using(database).filter(conversation_id=conv.id).count)
        assert count > 0
        assert conv.run_count == count
        assert conv.last_activity_at is not None and conv.last_activity_at >= conv.created_at


async def test_shuffled_batches_with_redelivery_converge_to_the_rows_of_an_in_order_projection(
    store: EventStore, database: str
) -> None:
    await make_workload(store, runs=15)
    events = await all_log_events(store)
    await in_thread(apply_batches, database, [events])
    in_order = await in_thread(rows, database)

    for seed in range(3):
        await in_thread(wipe, database)
        rng = random.Random(seed)
        shuffled = events + rng.sample(events, len(events) // 2)  # every event, half of them twice
        rng.shuffle(shuffled)
        size = rng.randint(1, 9)
        await in_thread(
            apply_batches, database, [shuffled[i : i + size] for i in range(0, len(shuffled), size)]
        )
        assert await in_thread(rows, database) == in_order, f"seed {seed}"


async def test_a_late_run_queued_does_not_regress_a_finished_run(store: EventStore, database: str) -> None:
    from agentstream.django_app.models import Run

    work = await make_workload(store, runs=1)
    events = [e for e in await all_log_events(store) if e.run_id == work.run_ids[0]]
    queued, rest = events[0], events[1:]
    assert queued.type == "run.queued"

    await in_thread(apply_batches, database, [list(reversed(rest)), [queued], [queued]])

    run = await in_thread(lambda: Run.objects.using(database).get(id=work.run_ids[0]))
    assert run.status == "succeeded"
    assert run.agent_key == "echo" and run.input["params"] == {"n": 0}
    assert (await in_thread(compare, events, database)).drift == ()


async def test_verify_reports_a_row_that_drifted_and_a_row_that_is_missing(
    store: EventStore, database: str
) -> None:
    from agentstream.django_app.models import Run

    work = await make_workload(store, runs=3)
    await projector_for(store, database).run(burst=True)
    await in_thread(lambda: Run.objects.using(database).filter(id=work.run_ids[0]).update(status="failed"))
    await in_thread(lambda: Run.objects.using(database).filter(id=work.run_ids[1]).delete())

    report = await verify_log(store.redis, store.keys, database)

    kinds = {(d.kind, d.id) for d in report.drift}
    assert kinds == {("different", work.run_ids[0]), ("missing", work.run_ids[1])}
    assert "status" in next(d.detail for d in report.drift if d.kind == "different")


async def test_verify_reports_drift_in_what_the_fold_does_not_track(store: EventStore, database: str) -> None:
    from agentstream.django_app.models import Conversation, Event, Run

    work = await make_workload(store, runs=8)
    await projector_for(store, database).run(burst=True)
    keyed, finished, other, archived = work.run_ids[0], work.run_ids[1], work.run_ids[2], work.run_ids[3]
    conversation = work.conversation_ids[0]

    def tamper() -> None:
        runs = Run.objects.using(database)
        runs.filter(id=keyed).update(idempotency_key=None, metadata={"i": "forged"})
        runs.filter(id=finished).update(final_messages=[{"role": "assistant", "content": "forged"}])
        runs.filter(id=other).update(input={"messages": [], "params": {}})
        Event.objects.using(database).filter(run_id=archived, seq=2).delete()
        Conversation.objects.using(database).filter(id=conversation).update(run_count=99)

    await in_thread(tamper)
    report = await verify_log(store.redis, store.keys, database)

    details = {d.id: d.detail for d in report.drift}
    assert {d.kind for d in report.drift} == {"different"}
    assert set(details) == {keyed, finished, other, archived, conversation}
    assert "idempotency_key: expected 'key-7-0', found None" in details[keyed]
    assert "metadata: expected {'i': 0}, found {'i': 'forged'}" in details[keyed]
    assert "final_messages" in details[finished]
    assert "input" in details[other]
    assert "archived events" in details[archived]
    assert "run_count: expected" in details[conversation] and "found 99" in details[conversation]


async def test_a_batch_committed_twice_archives_each_event_once_and_keeps_the_rest_of_the_transaction(
    store: EventStore, database: str
) -> None:
    from agentstream.django_app.models import Event as EventRow
    from agentstream.django_app.models import Run

    work = await make_workload(store, runs=3)
    events = await all_log_events(store)
    run_events = [e for e in events if e.run_id]
    half = run_events[: len(run_events) // 2]

    # the second batch meets rows of the first (PostgreSQL: its direct COPY hits a unique
    # violation and falls back to the conflict path), and holds a duplicate of its own
    await in_thread(apply_batches, database, [half, [*events, events[-1]]])

    count = await in_thread(EventRow.objects.using(database).count)
    assert count == len(run_events)
    runs = await in_thread(lambda: Run.objects.using(database).count())
    assert runs == len(work.run_ids)
    assert (await in_thread(compare, events, database)).drift == ()


async def test_verify_judges_a_row_only_against_its_own_partitions_log_once_the_logs_are_trimmed(
    store: EventStore, database: str
) -> None:
    from agentstream.django_app.models import Run

    work = await make_workload(store, runs=8)
    keys = store.keys
    while not all([await store.redis.xlen(keys.log(p)) for p in range(keys.partitions)]):
        await store.submit(SubmitRequest(agent_key=AGENT, owner=user_owner(1)))  # a run in every log
    await projector_for(store, database).run(burst=True)
    kept = keys.run_partition(work.conversation_ids[0])  # its log starts with the workload
    empty, *short = [p for p in range(keys.partitions) if p != kept]
    # each log is trimmed on its own: one kept whole, one emptied, the rest keep their newest entry
    await store.redis.xtrim(keys.log(empty), maxlen=0, approximate=False)
    for p in short:
        newest: Any = await store.redis.xrevrange(keys.log(p), count=1)
        await store.redis.xtrim(keys.log(p), minid=newest[0][0], approximate=False)

    assert (await verify_log(store.redis, store.keys, database)).ok

    # rows no history explains, created after their partition log's oldest entry: still drift
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    strays = {p: run_id_in(keys.partitions, p) for p in (kept, empty, short[0])}
    for run_id in strays.values():
        await in_thread(lambda r=run_id: Run.objects.using(database).create(id=r, created_at=later))

    report = await verify_log(store.redis, store.keys, database)

    assert {(d.kind, d.id) for d in report.drift} == {("extra", strays[kept]), ("extra", strays[short[0]])}
    for p in range(keys.partitions):  # nothing left to judge against
        await store.redis.xtrim(keys.log(p), maxlen=0, approximate=False)
    assert (await verify_log(store.redis, store.keys, database)).ok


def run_id_in(partitions: int, partition: int) -> str:
    while partition_of(run_id := str(uuid.uuid4()), partitions) != partition:
        pass
    return run_id


async def test_a_payload_nested_deeper_than_json_allows_is_a_note_not_a_stalled_projector(
    store: EventStore, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """msgpack takes 1,024 levels, orjson 255: such an event used to fail every batch it was in."""
    from agentstream.core.events import NewEvent
    from agentstream.django_app.models import Event as ArchivedEvent
    from agentstream.django_app.models import Run
    from tests.projections.conftest import claim

    deep: Any = "bottom"
    for _ in range(300):
        deep = {"d": deep}
    run_id = (await store.submit(SubmitRequest(AGENT, user_owner(1)))).run_id
    c = await claim(store, run_id)
    await store.append_many(
        run_id,
        c.attempt,
        [NewEvent("progress", {"deep": deep}), NewEvent("state.checkpoint", {"state": deep})],
    )
    await store.finish(run_id, c.attempt, "run.succeeded", {"output": {"deep": deep}})
    await asyncio.wait_for(projector_for(store, database).run(burst=True), 30)  # it retried for ever

    run = await in_thread(lambda: Run.objects.using(database).get(id=run_id))
    assert run.status == "succeeded"
    assert run.output["not_json"].startswith("cannot be stored as JSON")
    archived = await in_thread(
        lambda: list(
            ArchivedEvent.objects.using(database).filter(run_id=run_id).values_list("type", "payload")
        )
    )
    assert [kind for kind, _ in archived] == [
        "run.queued",
        "run.started",
        "progress",
        "state.checkpoint",
        "run.succeeded",
    ]
    assert "not_json" in archived[2][1] and "not_json" in archived[4][1]
    assert "progress seq 3 of run" in caplog.text and "a note is stored in its place" in caplog.text

"""The event store's contract, on fakeredis AND real Redis (the ``store`` fixture runs both)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import orjson
import pytest

from agentstream.core.cluster import ready, subscriber
from agentstream.core.errors import (
    ConversationBusy,
    EventEncodingError,
    FencedOut,
    IdempotencyConflict,
    IllegalTransition,
    NotFound,
    RunTerminal,
)
from agentstream.core.events import EventType, NewEvent
from agentstream.core.ids import idempotency_partition, new_run_id, partition_of
from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.state import RunStatus, fold
from agentstream.core.store import Claim, Dropped, EventStore, RetryOutcome, SubmitRequest
from tests.core.storetools import begin_again, claim, job_of, read_jobs


def request(**kw: object) -> SubmitRequest:
    base: dict[str, object] = {
        "agent_key": "a",
        "owner": "user:1",
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(kw)
    return SubmitRequest(**base)  # type: ignore[arg-type]


async def statuses(store: EventStore, *run_ids: str) -> list[str]:
    states = [await store.run_state(r) for r in run_ids]
    return [s.status.value if s else "missing" for s in states]


async def test_a_submitted_run_is_queued_with_its_input_and_a_job(store: EventStore) -> None:
    run_id = (await store.submit(request(params={"x": 1}))).run_id
    [queued] = await store.read_run(run_id)
    assert queued.type == EventType.RUN_QUEUED and queued.seq == 1
    assert queued.payload["messages"] == [{"role": "user", "content": "hi"}]
    c = await claim(store, run_id)
    assert c.attempt == 1 and c.input["params"] == {"x": 1}


async def test_the_whole_history_folds_to_the_state_redis_holds(store: EventStore) -> None:
    run_id = (await store.submit(request())).run_id
    c = await claim(store, run_id)
    await store.append_many(
        run_id, c.attempt, [NewEvent("assistant.delta", {"delta": "h"}), NewEvent("tool.call", {"name": "t"})]
    )
    await store.finish(run_id, c.attempt, EventType.RUN_SUCCEEDED, {"output": {"a": 1}})
    folded = fold(await store.read_run(run_id))
    held = await store.run_state(run_id)
    assert folded is not None and held is not None
    assert (
        (folded.status, folded.seq, folded.attempt)
        == (held.status, held.seq, held.attempt)
        == (RunStatus.SUCCEEDED, 5, 1)
    )
    assert folded.output == {"a": 1}


async def test_state_events_reach_the_partition_log_and_deltas_do_not(store: EventStore) -> None:
    run_id = (await store.submit(request())).run_id
    c = await claim(store, run_id)
    await store.append_many(
        run_id,
        c.attempt,
        [NewEvent("assistant.delta", {"delta": "x"}), NewEvent("assistant.message", {"content": "x"})],
    )
    log = await store.read_log(store.keys.run_partition(run_id))
    assert [e.event.type for e in log if e.event.run_id == run_id] == [
        "run.queued",
        "run.started",
        "assistant.message",
    ]


async def test_a_run_streams_entries_leave_out_the_run_id_which_the_log_carries(store: EventStore) -> None:
    """The run stream's key names the run: 36 bytes less per event. ``s`` stays: readers of earlier
    versions need it (a rolling upgrade has both)."""
    run_id = (await store.submit(request())).run_id
    c = await claim(store, run_id)
    await store.append_many(run_id, c.attempt, [NewEvent("assistant.delta", {"delta": "x"})])
    raw = await store.redis.xrange(store.keys.run_stream(run_id))
    assert [entry_id for entry_id, _ in raw] == [b"0-1", b"0-2", b"0-3"]
    assert [fields.get(b"r") for _, fields in raw] == [None, None, None]
    assert [fields[b"s"] for _, fields in raw] == [b"1", b"2", b"3"]
    assert [(e.run_id, e.seq) for e in await store.read_run(run_id)] == [
        (run_id, 1),
        (run_id, 2),
        (run_id, 3),
    ]
    log = await store.redis.xrange(store.keys.log(store.keys.run_partition(run_id)))
    assert {(f[b"r"], f[b"s"]) for _, f in log} >= {(run_id.encode(), b"1"), (run_id.encode(), b"2")}


async def test_concurrent_appenders_get_dense_unique_seqs(store: EventStore) -> None:
    run_id = (await store.submit(request())).run_id
    c = await claim(store, run_id)

    async def appender(i: int) -> None:
        for j in range(100):
            await store.append(run_id, c.attempt, "tool.result", {"w": i, "j": j})

    await asyncio.gather(*(appender(i) for i in range(100)))
    events = await store.read_run(run_id)
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, 10_003))  # queued, started, then exactly 1..10000 more
    per_writer = {}
    for e in events[2:]:
        per_writer.setdefault(e.payload["w"], []).append(e.payload["j"])
    assert all(js == list(range(100)) for js in per_writer.values())  # each writer's order kept


async def test_a_zombie_worker_cannot_append_after_another_begins_an_attempt(store: EventStore) -> None:
    run_id = (await store.submit(request())).run_id
    old = await claim(store, run_id)
    new = await begin_again(store, run_id)
    assert isinstance(new, Claim) and new.attempt == old.attempt + 1
    with pytest.raises(FencedOut, match="superseded by attempt 2"):
        await store.append(run_id, old.attempt, "assistant.message", {"content": "late"})
    with pytest.raises(FencedOut):
        await store.finish(run_id, old.attempt, EventType.RUN_SUCCEEDED, {})
    await store.append(run_id, new.attempt, "assistant.message", {"content": "ok"})
    events = await store.read_run(run_id)
    assert [e.attempt for e in events] == [0, 1, 2, 2]
    assert all(e.payload.get("content") != "late" for e in events)


async def test_the_heartbeat_renews_only_current_attempts(store: EventStore) -> None:
    run_id = (await store.submit(request())).run_id
    old = await claim(store, run_id)
    partition = store.keys.run_partition(run_id)
    job = await job_of(store, run_id)
    assert await store.heartbeat(partition, "a", "w1", [(run_id, old.attempt, job)]) == ["ok"]
    await begin_again(store, run_id)
    assert await store.heartbeat(partition, "a", "w1", [(run_id, old.attempt, job)]) == ["fenced"]


async def test_idempotent_submit_is_scoped_per_owner(store: EventStore) -> None:
    a1 = await store.submit(request(owner="user:1", idempotency_key="k"))
    a2 = await store.submit(request(owner="user:1", idempotency_key="k"))
    b1 = await store.submit(request(owner="user:2", idempotency_key="k"))
    assert a1.created and not a2.created and a1.run_id == a2.run_id
    assert b1.created and b1.run_id != a1.run_id


async def test_the_same_idempotency_key_with_another_body_is_a_conflict(store: EventStore) -> None:
    first = await store.submit(request(idempotency_key="k"))
    with pytest.raises(IdempotencyConflict, match=first.run_id):
        await store.submit(request(idempotency_key="k", messages=[{"role": "user", "content": "other"}]))


async def two_conversations_and_a_key_elsewhere(store: EventStore) -> tuple[str, str, str]:
    """Two conversations of user:1 in two partitions, and a key whose own partition is neither."""
    parts = store.settings.PARTITIONS
    first = await store.create_conversation("user:1", agent_key="a")
    second = await store.create_conversation("user:1", agent_key="a")
    while partition_of(second, parts) == partition_of(first, parts):
        second = await store.create_conversation("user:1", agent_key="a")
    taken = {partition_of(first, parts), partition_of(second, parts)}
    key = next(
        k for k in (f"k{i}" for i in range(1000)) if idempotency_partition("user:1", k, parts) not in taken
    )
    return first, second, key


async def test_one_idempotency_key_names_one_run_across_conversations(store: EventStore) -> None:
    first, second, key = await two_conversations_and_a_key_elsewhere(store)
    created = await store.submit(request(conversation_id=first, idempotency_key=key))
    again = await store.submit(request(conversation_id=first, idempotency_key=key))
    assert created.created and (again.run_id, again.created) == (created.run_id, False)
    with pytest.raises(IdempotencyConflict, match=created.run_id):
        await store.submit(request(conversation_id=second, idempotency_key=key))
    with pytest.raises(IdempotencyConflict, match=created.run_id):
        await store.submit(request(idempotency_key=key))  # no conversation: the key's own partition
    other_owner = await store.submit(request(owner="user:2", idempotency_key=key))
    assert other_owner.created


async def test_concurrent_submits_of_one_key_into_a_conversation_make_one_run(store: EventStore) -> None:
    first, _, key = await two_conversations_and_a_key_elsewhere(store)
    results = await asyncio.gather(
        *(store.submit(request(conversation_id=first, idempotency_key=key)) for _ in range(10))
    )
    assert len({r.run_id for r in results}) == 1 and sum(r.created for r in results) == 1


async def test_a_claimed_key_whose_submit_never_ran_creates_its_run_on_retry(store: EventStore) -> None:
    """A crash between claiming the key and the submit script: the retry creates the run."""
    first, _, key = await two_conversations_and_a_key_elsewhere(store)
    sent = request(conversation_id=first, idempotency_key=key)
    home = idempotency_partition("user:1", key, store.settings.PARTITIONS)
    orphan = new_run_id(store.settings.PARTITIONS, partition_of(first, store.settings.PARTITIONS))
    await store.redis.set(store.keys.idempotency(home, "user:1", key), f"{orphan}|{sent.fingerprint()}")
    retried = await store.submit(sent)
    assert (retried.run_id, retried.created) == (orphan, True)
    assert await statuses(store, orphan) == ["queued"]


async def test_a_refused_submit_leaves_its_idempotency_key_free(store: EventStore) -> None:
    first, _, key = await two_conversations_and_a_key_elsewhere(store)
    await store.submit(request(conversation_id=first))  # active: 'reject' refuses the next
    with pytest.raises(ConversationBusy):
        await store.submit(request(conversation_id=first, idempotency_key=key, policy="reject"))
    other_body = await store.submit(request(idempotency_key=key, messages=[{"role": "user", "content": "x"}]))
    assert other_body.created


async def test_a_submit_too_large_to_write_leaves_its_idempotency_key_free(store: EventStore) -> None:
    first, _, key = await two_conversations_and_a_key_elsewhere(store)
    huge = [{"role": "user", "content": "x" * (store.settings.MAX_EVENT_BYTES + 1)}]
    with pytest.raises(EventEncodingError):
        await store.submit(request(conversation_id=first, idempotency_key=key, messages=huge))
    corrected = await store.submit(request(conversation_id=first, idempotency_key=key))
    assert corrected.created


@pytest.mark.parametrize("key", [None, "k"])
async def test_a_submit_takes_every_value_its_payload_encoder_takes(
    store: EventStore, key: str | None
) -> None:
    """The payload encodes Decimal, sets and int keys; the request's fingerprint (computed for
    every submit, key or not) raised a bare TypeError on them, so such a submit never ran."""
    params = {"temperature": Decimal("0.5"), "tags": {"b", "a"}, "weights": {1: 0.5}}
    first = await store.submit(request(params=params, idempotency_key=key))
    assert first.created
    [queued] = await store.read_run(first.run_id)
    assert queued.payload["params"] == {"temperature": "0.5", "tags": ["a", "b"], "weights": {1: 0.5}}
    if key:
        again = await store.submit(request(params=dict(params), idempotency_key=key))
        assert (again.run_id, again.created) == (first.run_id, False)


async def test_a_submit_whose_idempotency_key_redis_refuses_writes_nothing(store: EventStore) -> None:
    """The key's SET used to come last in the submit script: with an expiry Redis refuses (an
    IDEMPOTENCY_TTL_SECONDS of 0, before Settings refused it) the run and its job were already
    written, the caller got an error, and its retry queued the same request again."""
    object.__setattr__(store.settings, "IDEMPOTENCY_TTL_SECONDS", 0)  # past Settings' own check
    with pytest.raises(Exception, match="invalid expire time"):
        await store.submit(request(idempotency_key="k"))
    left = [k async for k in store.redis.scan_iter(match=f"{store.settings.KEY_PREFIX}:*")]
    assert left == []


async def test_a_retry_whose_cancel_payload_is_too_large_still_retries(store: EventStore) -> None:
    """The run.cancelled payload rides along with every retry, in case of a cancel: one too large
    to write (a long partial output) falls back to its reason, never failing the retry."""
    run_id = (await store.submit(request(max_attempts=3))).run_id
    c = await claim(store, run_id)
    partial = {
        "reason": "cancel requested",
        "partial_output": {"content": "x" * store.settings.MAX_EVENT_BYTES},
    }
    outcome = await store.schedule_retry(
        run_id, c.attempt, 0, {"type": "E", "message": "m"}, cancelled=partial
    )
    assert outcome == RetryOutcome(True, outcome.seq, outcome.due_ms) and outcome.retrying


async def test_cancelling_a_queued_run_cancels_it_at_once_and_it_never_starts(store: EventStore) -> None:
    run_id = (await store.submit(request())).run_id
    outcome = await store.cancel(run_id)
    assert outcome.cancelled
    assert await statuses(store, run_id) == ["cancelled"]
    partition = store.keys.run_partition(run_id)
    assert await read_jobs(store, partition, "a") == []  # the job is gone from the queue


async def test_a_job_read_before_its_cancel_is_dropped_at_begin(store: EventStore) -> None:
    run_id = (await store.submit(request())).run_id
    [(job, _)] = await read_jobs(store, store.keys.run_partition(run_id), "a")
    await store.cancel(run_id)
    result = await store.begin_attempt(run_id, job, "w1", "a")
    assert isinstance(result, Dropped) and result.reason == "cancelled"
    pending = await store.redis.xpending(
        store.keys.queue(store.keys.run_partition(run_id), "a"), WORKERS_GROUP
    )
    assert pending["pending"] == 0


async def test_cancelling_a_running_run_asks_its_worker_and_broadcasts(store: EventStore) -> None:
    run_id = (await store.submit(request())).run_id
    c = await claim(store, run_id)
    pubsub = store.redis.pubsub()
    await pubsub.subscribe(store.keys.cancel_channel())
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    outcome = await store.cancel(run_id, reason="user asked")
    assert not outcome.cancelled
    message = None
    for _ in range(50):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            break
    await pubsub.aclose()
    assert message is not None and message["data"] == run_id.encode()
    result = await store.append_many(
        run_id, c.attempt, [NewEvent("assistant.message", {"content": "partial"})]
    )
    assert result.cancel_requested
    await store.finish(run_id, c.attempt, EventType.RUN_CANCELLED, {"partial_output": "partial"})
    assert await statuses(store, run_id) == ["cancelled"]


async def test_a_terminal_run_refuses_every_further_event(store: EventStore) -> None:
    run_id = (await store.submit(request())).run_id
    c = await claim(store, run_id)
    await store.finish(run_id, c.attempt, EventType.RUN_FAILED, {"error": {"message": "x"}})
    with pytest.raises(RunTerminal):
        await store.append(run_id, c.attempt, "assistant.message", {})
    with pytest.raises(RunTerminal):
        await store.finish(run_id, c.attempt, EventType.RUN_SUCCEEDED, {})
    with pytest.raises(RunTerminal):
        await store.cancel(run_id)
    with pytest.raises(RunTerminal):
        await store.schedule_retry(run_id, c.attempt, 0, {"message": "x"})


async def test_a_worker_cannot_append_lifecycle_events(store: EventStore) -> None:
    run_id = (await store.submit(request())).run_id
    c = await claim(store, run_id)
    for kind in ("run.succeeded", "run.queued", "run.started", "run.retrying"):
        with pytest.raises(IllegalTransition, match="written by the runtime"):
            await store.append(run_id, c.attempt, kind, {})
    assert len(await store.read_run(run_id)) == 2


async def test_unknown_runs_are_not_found(store: EventStore) -> None:
    with pytest.raises(NotFound):
        await store.append("00000000-0000-4000-8000-000000000000", 1, "x", {})
    with pytest.raises(NotFound):
        await store.cancel("00000000-0000-4000-8000-000000000000")
    assert await store.run_state("00000000-0000-4000-8000-000000000000") is None


async def test_cancel_by_another_owner_is_not_found(store: EventStore) -> None:
    run_id = (await store.submit(request(owner="user:1"))).run_id
    with pytest.raises(NotFound):
        await store.cancel(run_id, owner="user:2")
    assert await statuses(store, run_id) == ["queued"]


async def test_a_retry_waits_in_the_delayed_set_then_runs_as_the_next_attempt(store: EventStore) -> None:
    run_id = (await store.submit(request(max_attempts=2))).run_id
    c = await claim(store, run_id)
    outcome = await store.schedule_retry(run_id, c.attempt, 0.0, {"type": "Boom", "message": "x"})
    assert outcome.retrying and await statuses(store, run_id) == ["queued"]
    assert await store.promote_due(store.keys.run_partition(run_id)) == (1, None)
    again = await claim(store, run_id)
    assert again.attempt == 2
    last = await store.schedule_retry(run_id, again.attempt, 0.0, {"type": "Boom", "message": "x"})
    assert not last.retrying
    assert await statuses(store, run_id) == ["failed"]
    dead = await store.redis.xrange(store.keys.dead(store.keys.run_partition(run_id)))
    assert [f[b"reason"] for _, f in dead] == [b"retries exhausted"]


async def test_a_retry_is_not_promoted_before_it_is_due(store: EventStore) -> None:
    run_id = (await store.submit(request())).run_id
    c = await claim(store, run_id)
    await store.schedule_retry(run_id, c.attempt, 60.0, {"message": "later"})
    promoted = await store.promote_due(store.keys.run_partition(run_id))
    assert promoted.dispatched == 0 and promoted.next_due_s is not None and 59 < promoted.next_due_s <= 60


async def test_a_run_that_keeps_killing_its_workers_is_dead_lettered(store: EventStore) -> None:
    run_id = (await store.submit(request(max_attempts=2))).run_id
    await claim(store, run_id)  # attempt 1 dies
    second = await begin_again(store, run_id)  # attempt 2 dies too
    assert isinstance(second, Claim) and second.attempt == 2
    third = await begin_again(store, run_id, worker="w3")
    assert isinstance(third, Dropped) and third.dead_lettered
    state = fold(await store.read_run(run_id))
    assert state is not None and state.status is RunStatus.FAILED
    assert state.error["type"] == "MaxAttemptsExceeded"


async def test_a_scheduled_run_waits_until_run_at(store: EventStore) -> None:
    run_id = (await store.submit(request(run_at_ms=2**41))).run_id  # far in the future
    partition = store.keys.run_partition(run_id)
    assert await read_jobs(store, partition, "a") == []
    assert (await store.promote_due(partition)).dispatched == 0
    assert await store.redis.zscore(store.keys.delayed(partition), run_id) == 2**41


async def test_a_delayed_run_due_before_its_partitions_others_is_announced(store: EventStore) -> None:
    """The promoters sleep until the earliest due run they know of: the due channel tells them of
    an earlier one (the wait in ms), and only of an earlier one."""
    await ready(store.redis)
    pubsub = subscriber(store.redis)  # on a cluster: one node's connection hears every PUBLISH
    await pubsub.subscribe(store.keys.due_channel())

    async def heard() -> list[int]:
        out = []
        deadline = time.monotonic() + 0.5
        while (left := deadline - time.monotonic()) > 0:
            message = await pubsub.get_message(timeout=left)
            if message is not None and message["type"] == "message":
                out.append(int(message["data"]))
        return out

    # idempotency keys that land in one partition: the runs share its delayed zset
    partitions = store.settings.PARTITIONS
    keys = [k for k in (f"k{i}" for i in range(1000)) if idempotency_partition("user:1", k, partitions) == 0][
        :3
    ]
    now_ms = int(time.time() * 1000)

    async def submit_due_in(ms: int, key: str) -> None:
        await store.submit(request(run_at_ms=now_ms + ms, idempotency_key=key))

    await submit_due_in(60_000, keys[0])
    [first] = await heard()
    assert 58_000 < first <= 60_000
    await submit_due_in(120_000, keys[1])
    assert await heard() == []  # after the earliest: nobody wakes sooner for it
    await submit_due_in(30_000, keys[2])
    [sooner] = await heard()
    assert 28_000 < sooner <= 30_000
    await pubsub.aclose()


async def test_garbage_jobs_are_dead_lettered_with_the_reason(store: EventStore) -> None:
    await store.ensure_groups(["a"])
    queue = store.keys.queue(0, "a")
    await store.redis.xadd(queue, {"junk": "\xff"})
    [(job, _)] = [(j, "") for j, _ in await _raw_jobs(store, queue)]
    await store.dead_letter(0, "a", job, "entry has no run id", raw_entry={b"junk": b"x"})
    dead = await store.redis.xrange(store.keys.dead(0))
    assert dead[0][1][b"reason"] == b"entry has no run id"
    assert (await store.redis.xpending(queue, WORKERS_GROUP))["pending"] == 0


async def _raw_jobs(store: EventStore, queue: str) -> list[tuple[str, dict[bytes, bytes]]]:
    reply = await store.redis.xreadgroup(WORKERS_GROUP, "w1", {queue: ">"}, count=10)
    return [(j.decode(), f) for _, entries in reply for j, f in entries]


class TestConversations:
    async def test_enqueue_runs_one_at_a_time_in_submit_order(self, store: EventStore) -> None:
        conv = await store.create_conversation("user:1", agent_key="a")
        runs = [(await store.submit(request(conversation_id=conv))).run_id for _ in range(5)]
        partition = store.keys.run_partition(runs[0])
        order = []
        for _ in runs:
            jobs = await read_jobs(store, partition, "a")
            assert len(jobs) == 1  # only the conversation's active run is ever dispatched
            job, run_id = jobs[0]
            c = await store.begin_attempt(run_id, job, "w1", "a")
            assert isinstance(c, Claim)
            await store.finish(run_id, c.attempt, EventType.RUN_SUCCEEDED, {})
            order.append(run_id)
        assert order == runs

    async def test_reject_refuses_a_run_while_one_is_active(self, store: EventStore) -> None:
        conv = await store.create_conversation("user:1")
        first = (await store.submit(request(conversation_id=conv))).run_id
        with pytest.raises(ConversationBusy, match=first):
            await store.submit(request(conversation_id=conv, policy="reject"))

    async def test_interrupt_cancels_a_queued_active_run_and_starts_the_new_one(
        self, store: EventStore
    ) -> None:
        conv = await store.create_conversation("user:1")
        first = (await store.submit(request(conversation_id=conv))).run_id
        second = (await store.submit(request(conversation_id=conv, policy="interrupt"))).run_id
        assert await statuses(store, first, second) == ["cancelled", "queued"]
        assert [r for _, r in await read_jobs(store, store.keys.run_partition(first), "a")] == [second]

    async def test_interrupt_asks_a_running_active_run_to_cancel_and_the_new_one_goes_next(
        self, store: EventStore
    ) -> None:
        conv = await store.create_conversation("user:1")
        first = (await store.submit(request(conversation_id=conv))).run_id
        waiting = (await store.submit(request(conversation_id=conv))).run_id
        c = await claim(store, first)
        urgent = (await store.submit(request(conversation_id=conv, policy="interrupt"))).run_id
        state = await store.run_state(first)
        assert state is not None and state.cancel_requested
        await store.finish(first, c.attempt, EventType.RUN_CANCELLED, {})
        jobs = await read_jobs(store, store.keys.run_partition(first), "a")
        assert [r for _, r in jobs] == [urgent]
        assert await statuses(store, waiting) == ["queued"]

    async def test_cancelling_a_waiting_run_removes_it_from_the_line(self, store: EventStore) -> None:
        conv = await store.create_conversation("user:1")
        first = (await store.submit(request(conversation_id=conv))).run_id
        waiting = (await store.submit(request(conversation_id=conv))).run_id
        third = (await store.submit(request(conversation_id=conv))).run_id
        await store.cancel(waiting)
        c = await claim(store, first)
        await store.finish(first, c.attempt, EventType.RUN_SUCCEEDED, {})
        assert [r for _, r in await read_jobs(store, store.keys.run_partition(first), "a")] == [third]

    async def test_another_owner_cannot_submit_into_a_conversation(self, store: EventStore) -> None:
        conv = await store.create_conversation("user:1")
        with pytest.raises(NotFound):
            await store.submit(request(conversation_id=conv, owner="user:2"))
        with pytest.raises(NotFound):
            await store.update_conversation(conv, "user:2", title="mine")

    async def test_a_deleted_conversation_takes_no_new_runs(self, store: EventStore) -> None:
        conv = await store.create_conversation("user:1")
        await store.update_conversation(conv, "user:1", title="renamed")
        await store.delete_conversation(conv, "user:1")
        with pytest.raises(NotFound, match="deleted"):
            await store.submit(request(conversation_id=conv))
        log = await store.read_log(partition_of(conv, store.settings.PARTITIONS))
        assert [e.event.type for e in log] == [
            "conversation.created",
            "conversation.updated",
            "conversation.deleted",
        ]

    async def test_a_conversation_state_keeps_its_title_and_metadata_until_deleted(
        self, store: EventStore
    ) -> None:
        conv = await store.create_conversation("user:1", title="t", metadata={"k": [1]})
        key = store.keys.conversation(conv)

        async def kept() -> tuple[Any, ...]:
            return tuple(await store.redis.hmget(key, "title", "meta", "created", "updated"))

        title, meta, created, updated = await kept()
        assert (title, orjson.loads(meta), updated) == (b"t", {"k": [1]}, created)
        await store.update_conversation(conv, "user:1", metadata={})
        assert (await kept())[:2] == (b"t", b"{}")
        await store.update_conversation(conv, "user:1", title="")
        assert (await kept())[:2] == (b"", b"{}")
        log = await store.read_log(partition_of(conv, store.settings.PARTITIONS))
        assert int((await kept())[3]) == log[-1].event.ts_ms  # the event's time
        await store.delete_conversation(conv, "user:1")
        assert (await kept())[:2] == (None, None)  # a deleted conversation keeps no copies

    async def test_conversation_metadata_must_be_json(self, store: EventStore) -> None:
        with pytest.raises(EventEncodingError, match="metadata cannot be encoded as JSON"):
            await store.create_conversation("user:1", metadata={"raw": b"bytes"})
        # what events take by their obvious wire form is kept in that same form
        kept = await store.create_conversation(
            "user:1", metadata={"price": Decimal("1.10"), "tags": {"b", "a"}}
        )
        meta = await store.redis.hget(store.keys.conversation(kept), "meta")
        assert orjson.loads(meta) == {"price": "1.10", "tags": ["a", "b"]}
        conv = await store.create_conversation("user:1")
        with pytest.raises(EventEncodingError, match=r"payload\['metadata'\]\['n'\] \(int\)"):
            await store.update_conversation(conv, "user:1", metadata={"n": 2**70})
        log = await store.read_log(partition_of(conv, store.settings.PARTITIONS))
        mine = [e.event.type for e in log if e.event.conversation_id == conv]
        assert mine == ["conversation.created"]  # nothing else written


async def test_a_blocking_tail_longer_than_redis_py_default_read_timeout_is_not_cut(
    store: EventStore,
) -> None:
    run_id = (await store.submit(request())).run_id
    c = await claim(store, run_id)

    async def append_later() -> None:
        await asyncio.sleep(5.5)  # past redis-py 8's default 5 s read timeout
        await store.append(run_id, c.attempt, "assistant.message", {"content": "late"})

    writer = asyncio.create_task(append_later())
    got = await store.tail({run_id: 2}, block_ms=8000)
    await writer
    assert [e.payload["content"] for e in got[run_id]] == ["late"]


@pytest.mark.parametrize("pipelined", [False, True])
async def test_scripts_are_reloaded_after_redis_forgets_them(store: EventStore, pipelined: bool) -> None:
    store = EventStore(store.redis, store.settings, pipeline_scripts=pipelined)
    first = (await store.submit(request())).run_id
    await store.redis.script_flush()  # what a Redis restart does to the script cache
    second = (await store.submit(request())).run_id
    assert await statuses(store, first, second) == ["queued", "queued"]


async def test_an_undecodable_entry_in_a_run_stream_is_left_out_of_its_reads(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = (await store.submit(request())).run_id
    await store.redis.xadd(store.keys.run_stream(run_id), {"t": "x", "p": b"\xc1 not msgpack"}, id="0-2")
    await store.redis.xadd(store.keys.run_stream(run_id), {"junk": "1"}, id="0-3")
    assert [e.seq for e in await store.read_run(run_id)] == [1]
    assert caplog.text.count("undecodable stream entry") == 2

"""claim_jobs: one script call reads new jobs of several queues and begins each, exactly as
XREADGROUP followed by begin_attempt per job would; what it cannot vouch for it only reads."""

from __future__ import annotations

import uuid

import pytest

from agentstream.core.ids import new_run_id, partition_of
from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.store import Claim, Dropped, EventStore, SubmitRequest

PARTITIONS = 4  # the batched fixture's (tests/core/conftest.py)


@pytest.fixture
async def store(batched: EventStore) -> EventStore:
    await batched.ensure_groups(["echo", "other"])
    return batched


def _queues(store: EventStore, partition: int) -> list[tuple[int, str]]:
    return [(partition, "echo"), (partition, "other")]


async def _submit(store: EventStore, partition: int, agent_key: str = "echo", **kw: object) -> str:
    conv = await store.create_conversation("user:1", conversation_id=_conversation_in(partition))
    result = await store.submit(
        SubmitRequest(agent_key, "user:1", conversation_id=conv, policy="enqueue", **kw)
    )  # type: ignore[arg-type]
    return result.run_id


def _conversation_in(partition: int) -> str:
    """A fresh conversation id of ``partition`` (runs of a conversation share its partition)."""
    while True:
        candidate = str(uuid.uuid4())
        if partition_of(candidate, PARTITIONS) == partition:
            return candidate


async def test_jobs_of_several_queues_are_read_and_begun_in_one_call(store: EventStore) -> None:
    echo = await _submit(store, 1, messages=[{"role": "user", "content": "hi"}])
    other = await _submit(store, 1, "other")
    jobs = await store.claim_jobs(_queues(store, 1), "w1", 10)
    assert sorted((j.queue, j.run_id) for j in jobs) == [(0, echo), (1, other)]
    for job in jobs:
        assert isinstance(job.begun, Claim)
        assert job.begun.attempt == 1 and job.begun.seq == 2 and job.begun.run_id == job.run_id
        assert job.begun.conversation_id  # read from the state, like begin_attempt
        state = await store.run_state(job.run_id)
        assert state is not None and state.status.value == "running"
    [begun_echo] = [j.begun for j in jobs if j.run_id == echo]
    assert isinstance(begun_echo, Claim) and begun_echo.input["messages"] == [
        {"role": "user", "content": "hi"}
    ]
    # the jobs wait in this worker's PEL (its lease) until the run ends
    pending = await store.redis.xpending(store.keys.queue(1, "echo"), WORKERS_GROUP)
    assert pending["pending"] == 1 and pending["consumers"][0]["name"] == b"w1"
    assert [e.type for e in await store.read_run(echo)] == ["run.queued", "run.started"]


async def test_it_reads_at_most_count_in_all_queues_in_order_and_nothing_when_empty(
    store: EventStore,
) -> None:
    echo = [await _submit(store, 2) for _ in range(2)]
    other = [await _submit(store, 2, "other") for _ in range(3)]
    first = await store.claim_jobs(_queues(store, 2), "w1", 3)  # what the first queue lacks, from the next
    assert [(j.queue, j.run_id) for j in first] == [(0, echo[0]), (0, echo[1]), (1, other[0])]
    second = await store.claim_jobs(list(reversed(_queues(store, 2))), "w1", 3)
    assert [(j.queue, j.run_id) for j in second] == [(0, other[1]), (0, other[2])]
    assert await store.claim_jobs(_queues(store, 2), "w1", 3) == []
    for queue in ("echo", "other"):  # nothing read beyond the count: every read job is begun
        pending = await store.redis.xpending(store.keys.queue(2, queue), WORKERS_GROUP)
        assert pending["pending"] == {"echo": 2, "other": 3}[queue]


async def test_a_job_whose_run_already_ended_is_dropped_like_begin_attempt_drops_it(
    store: EventStore,
) -> None:
    run_id = await _submit(store, 3)
    await store.cancel(run_id)  # queued: cancelled at once, its job entry goes
    second = await _submit(store, 3)
    jobs = await store.claim_jobs(_queues(store, 3), "w1", 10)
    assert [j.run_id for j in jobs] == [second]


async def test_entries_it_cannot_vouch_for_are_only_read_for_the_worker_to_judge(store: EventStore) -> None:
    queue = store.keys.queue(0, "echo")
    foreign = new_run_id(PARTITIONS, 1)  # a run id of another partition
    real = await _submit(store, 0)
    [_] = await store.claim_jobs(_queues(store, 0), "w1", 10)  # the real run's own job, begun
    # only a run's own id names its state: near misses of a real one are only read
    lookalikes = [real.upper(), real[:-1] + "x", real + ":s", f"{real[:-2]}:s"]
    raw: list[bytes] = [
        b"",
        b"not-a-run-id",
        foreign.encode(),
        b"\xff\xfe",
        *(r.encode() for r in lookalikes),
    ]
    await store.redis.xadd(queue, {"x": "no run id"})
    for run_id in raw[1:]:
        await store.redis.xadd(queue, {"r": run_id})
    jobs = await store.claim_jobs(_queues(store, 0), "w1", 10)
    assert [j.begun for j in jobs] == [None] * len(raw)
    assert [j.raw_run_id for j in jobs] == raw
    assert all(j.run_id == "" for j in jobs)
    # read, like XREADGROUP (the real run's job too: it runs)
    assert (await store.redis.xpending(queue, WORKERS_GROUP))["pending"] == len(raw) + 1
    assert (await store.run_state(real)).attempt == 1  # type: ignore[union-attr]


async def test_a_job_begun_twice_is_dropped_as_stale_the_second_time(store: EventStore) -> None:
    run_id = await _submit(store, 1)
    [job] = await store.claim_jobs(_queues(store, 1), "w1", 10)
    assert isinstance(job.begun, Claim)
    again = await store.begin_attempt(run_id, "0-1", "w2", "echo")  # another job id: stale
    assert isinstance(again, Dropped) and again.reason == "stale job entry"


async def test_a_small_input_rides_in_the_job_entry_and_a_large_one_is_read_from_the_run(
    store: EventStore,
) -> None:
    small = await _submit(store, 1, messages=[{"role": "user", "content": "hi"}])
    large = await _submit(store, 1, messages=[{"role": "user", "content": "x" * 10_000}])
    entries = await store.redis.xrange(store.keys.queue(1, "echo"))
    assert [b"p" in fields for _, fields in entries] == [True, False]  # not kept twice while queued
    jobs = await store.claim_jobs(_queues(store, 1), "w1", 10)
    inputs = {j.run_id: j.begun.input for j in jobs if isinstance(j.begun, Claim)}
    assert inputs[small]["messages"][0]["content"] == "hi"
    assert inputs[large]["messages"][0]["content"] == "x" * 10_000

"""The opt-in ScriptBatcher: many concurrent script calls share one pipeline, same results."""

from __future__ import annotations

import asyncio

import pytest

from agentstream.core.errors import FencedOut
from agentstream.core.store import Claim, EventStore, SubmitRequest


@pytest.fixture
def pipelined(store: EventStore) -> EventStore:
    return EventStore(store.redis, store.settings, pipeline_scripts=True)


async def test_concurrent_submits_claims_and_finishes_share_round_trips_and_all_land(
    pipelined: EventStore,
) -> None:
    sent: list[int] = []
    original = pipelined.redis.pipeline

    def counting_pipeline(*args: object, **kwargs: object) -> object:
        sent.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    pipelined.redis.pipeline = counting_pipeline  # type: ignore[method-assign]
    results = await asyncio.gather(*(pipelined.submit(SubmitRequest("echo", "user:1")) for _ in range(50)))
    assert len({r.run_id for r in results}) == 50
    assert len(sent) <= 2  # one tick's worth of calls, one round trip (plus a NOSCRIPT retry at most)

    await pipelined.ensure_groups(["echo"])
    claims = await asyncio.gather(*(pipelined.begin_attempt(r.run_id, "1-1", "w", "echo") for r in results))
    # the job id "1-1" is stale for every run: each is dropped, none started
    assert all(not isinstance(c, Claim) for c in claims)


async def test_a_refusal_inside_a_batch_fails_only_its_own_caller(pipelined: EventStore) -> None:
    run = await pipelined.submit(SubmitRequest("echo", "user:1"))
    state = await pipelined.run_state(run.run_id)
    assert state is not None
    job = (await pipelined.redis.hget(pipelined.keys.run_state(run.run_id), "job")).decode()
    claim = await pipelined.begin_attempt(run.run_id, job, "w", "echo")
    assert isinstance(claim, Claim)
    good, bad = await asyncio.gather(
        pipelined.append(run.run_id, claim.attempt, "assistant.message", {"content": "hi"}),
        pipelined.append(run.run_id, claim.attempt + 7, "assistant.message", {"content": "zombie"}),
        return_exceptions=True,
    )
    assert good == claim.seq + 1
    assert isinstance(bad, FencedOut)
    events = await pipelined.read_run(run.run_id)
    assert [e.payload.get("content") for e in events if e.type == "assistant.message"] == ["hi"]


async def test_the_hiredis_packer_sends_the_same_bytes_as_redis_py() -> None:
    from redis.asyncio import Connection

    from agentstream.core.store import HiredisPackConnection

    fast, slow = HiredisPackConnection(), Connection()
    for args in [
        ("SET", "k", "v"),
        ("EVALSHA", "abc", 2, "k1", "k2", b"\x00\xffbin", 12, -3, "ünï"),
        ("XADD", b"stream", "*", "f", 1.5),
        ("CONFIG GET", "maxmemory"),
    ]:
        assert b"".join(fast.pack_command(*args)) == b"".join(slow.pack_command(*args)), args


def test_the_hiredis_packer_refuses_what_redis_py_refuses() -> None:
    from redis.exceptions import DataError

    from agentstream.core.store import HiredisPackConnection

    for bad in (None, True):
        with pytest.raises(DataError):
            HiredisPackConnection().pack_command("SET", "k", bad)


async def _running(store: EventStore) -> tuple[str, Claim]:
    run = await store.submit(SubmitRequest("echo", "user:1"))
    job = (await store.redis.hget(store.keys.run_state(run.run_id), "job")).decode()
    claim = await store.begin_attempt(run.run_id, job, "w", "echo")
    assert isinstance(claim, Claim)
    return run.run_id, claim


async def test_finish_writes_the_attempts_last_events_before_the_terminal_one_in_one_call(
    store: EventStore,
) -> None:
    from agentstream.core.events import NewEvent

    run_id, claim = await _running(store)
    last = [NewEvent("assistant.delta", {"delta": "he"}), NewEvent("assistant.message", {"content": "hello"})]
    seq = await store.finish(run_id, claim.attempt, "run.succeeded", {"output": {}}, events=last)
    events = await store.read_run(run_id)
    assert [e.type for e in events] == [
        "run.queued",
        "run.started",
        "assistant.delta",
        "assistant.message",
        "run.succeeded",
    ]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5] and seq == 5
    assert all(e.attempt == claim.attempt for e in events[1:])
    log = [e.event.type for e in await store.read_log(store.keys.run_partition(run_id))]
    assert "assistant.delta" not in log and "assistant.message" in log  # deltas stay ephemeral


async def test_finish_with_a_lifecycle_event_among_its_events_writes_nothing(store: EventStore) -> None:
    from agentstream.core.errors import IllegalTransition
    from agentstream.core.events import NewEvent

    run_id, claim = await _running(store)
    with pytest.raises(IllegalTransition):
        await store.finish(run_id, claim.attempt, "run.succeeded", {}, events=[NewEvent("run.failed", {})])
    assert [e.type for e in await store.read_run(run_id)] == ["run.queued", "run.started"]


async def test_a_zombie_finish_with_events_is_fenced_and_writes_nothing(store: EventStore) -> None:
    from agentstream.core.events import NewEvent

    run_id, claim = await _running(store)
    with pytest.raises(FencedOut):
        await store.finish(run_id, claim.attempt + 1, "run.succeeded", {}, events=[NewEvent("x.y", {})])
    assert [e.type for e in await store.read_run(run_id)] == ["run.queued", "run.started"]

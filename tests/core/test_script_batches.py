"""The ScriptBatcher's batches: one EVALSHA of ``batch.lua`` runs a tick's script calls, each as its
own script would; on a single Redis they travel on the ScriptChannel, written at once. Faults are
injected on a redis-server of the test's own (restart, a paused server, scripts flushed)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions

from agentstream.core.events import NewEvent
from agentstream.core.script_channel import ScriptChannel
from agentstream.core.settings import Settings
from agentstream.core.store import Claim, EventStore, SubmitRequest, redis_from_url
from tests.faults.topology import RedisServer, running_redis


async def _running(store: EventStore) -> Claim:
    run = await store.submit(SubmitRequest("echo", "user:1"))
    job = (await store.redis.hget(store.keys.run_state(run.run_id), "job")).decode()
    claim = await store.begin_attempt(run.run_id, job, "w", "echo")
    assert isinstance(claim, Claim)
    return claim


async def test_a_script_error_inside_a_batch_reaches_only_its_caller(batched: EventStore) -> None:
    await batched.ensure_groups(["echo"])
    good, broken = await asyncio.gather(_running(batched), _running(batched))
    # a state key of the wrong type: the script's HMGET raises WRONGTYPE inside the batch
    await batched.redis.delete(batched.keys.run_state(broken.run_id))
    await batched.redis.set(batched.keys.run_state(broken.run_id), "not a hash")
    ok, failed, ended = await asyncio.gather(
        batched.append(good.run_id, good.attempt, "assistant.message", {"content": "hi"}),
        batched.append(broken.run_id, broken.attempt, "assistant.message", {"content": "lost"}),
        batched.finish(good.run_id, good.attempt, "run.succeeded", {"output": {}}),
        return_exceptions=True,
    )
    assert ok == good.seq + 1
    assert isinstance(failed, redis.exceptions.ResponseError) and "WRONGTYPE" in str(failed)
    assert ended == good.seq + 2
    assert [e.type for e in await batched.read_run(good.run_id)][-2:] == [
        "assistant.message",
        "run.succeeded",
    ]


async def test_one_tick_of_calls_over_every_partition_all_land(batched: EventStore) -> None:
    """On a cluster the tick's calls split into one batch per slot; on a single Redis, one batch."""
    await batched.ensure_groups(["echo"])
    claims = await asyncio.gather(*(_running(batched) for _ in range(40)))
    assert len({batched.keys.run_partition(c.run_id) for c in claims}) == 4
    seqs = await asyncio.gather(
        *(batched.finish(c.run_id, c.attempt, "run.succeeded", {"output": {}}) for c in claims)
    )
    assert seqs == [c.seq + 1 for c in claims]


async def test_more_calls_than_one_batch_holds_keep_their_order_and_replies(batched: EventStore) -> None:
    await batched.ensure_groups(["echo"])
    claim = await _running(batched)
    seqs = await asyncio.gather(
        *(batched.append(claim.run_id, claim.attempt, "x.n", {"i": i}) for i in range(300))
    )
    assert seqs == list(range(claim.seq + 1, claim.seq + 301))
    events = await batched.read_run(claim.run_id, after_seq=claim.seq)
    assert [e.payload["i"] for e in events] == list(range(300))


async def test_a_call_with_more_arguments_than_lua_can_unpack_lands_whole_in_a_batch(
    batched: EventStore,
) -> None:
    """batch.lua copies a call's arguments with unpack up to 4,000 values, beyond that one by one
    (Lua's C stack holds ~8,000): 2,500 events are 10,004 arguments, sent beside another call."""
    await batched.ensure_groups(["echo"])
    big, small = await asyncio.gather(_running(batched), _running(batched))
    events = [NewEvent("x.n", {"i": i}) for i in range(2500)]
    landed, other = await asyncio.gather(
        batched.append_many(big.run_id, big.attempt, events),
        batched.append(small.run_id, small.attempt, "x.n", {"i": -1}),
    )
    assert (landed.first_seq, landed.last_seq) == (big.seq + 1, big.seq + 2500)
    assert other == small.seq + 1
    written = await batched.read_run(big.run_id, after_seq=big.seq)
    assert [e.payload["i"] for e in written] == list(range(2500))


# -- the channel, on a redis-server of the test's own ------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    yield from running_redis(tmp_path / "redis")


@pytest.fixture
async def on_own(own_redis: RedisServer) -> AsyncIterator[EventStore]:
    client = redis_from_url(own_redis.url)
    store = EventStore(client, Settings(KEY_PREFIX=f"t{uuid.uuid4().hex[:8]}"), pipeline_scripts=True)
    yield store
    await store.aclose()
    await client.aclose()


async def test_a_single_redis_sends_batches_on_the_channel(
    on_own: EventStore, own_redis: RedisServer
) -> None:
    await asyncio.gather(*(on_own.submit(SubmitRequest("echo", "user:1")) for _ in range(2)))  # loaded
    before = _evalsha_calls(own_redis)
    results = await asyncio.gather(*(on_own.submit(SubmitRequest("echo", "user:1")) for _ in range(40)))
    assert len({r.run_id for r in results}) == 40
    # 40 calls, at most 16 per batch as they are made (EAGER_CALLS): 3 EVALSHAs, not 40
    assert _evalsha_calls(own_redis) - before <= 4
    assert ScriptChannel.of(on_own.redis, 1.0) is not None


async def test_scripts_flushed_from_the_server_are_loaded_again(
    on_own: EventStore, own_redis: RedisServer
) -> None:
    await on_own.submit(SubmitRequest("echo", "user:1"))
    own_redis.client().script_flush()
    one = await on_own.submit(SubmitRequest("echo", "user:1"))  # a batch of one: its own script
    own_redis.client().script_flush()
    many = await asyncio.gather(*(on_own.submit(SubmitRequest("echo", "user:1")) for _ in range(5)))
    assert one.created and all(r.created for r in many)
    own_redis.client().script_flush()
    # a burst refused chunk by chunk loads the scripts once, not once per chunk (which took a
    # pooled connection per chunk until the pool ran out)
    burst = await asyncio.gather(*(on_own.submit(SubmitRequest("echo", "user:1")) for _ in range(2000)))
    assert all(r.created for r in burst)


async def test_the_channel_reconnects_after_a_redis_restart(
    on_own: EventStore, own_redis: RedisServer
) -> None:
    first = await on_own.submit(SubmitRequest("echo", "user:1"))
    own_redis.kill()
    own_redis.start()  # same port; AOF always kept the run
    await asyncio.sleep(0.1)  # the channel's idle connection hears the EOF
    second = await on_own.submit(SubmitRequest("echo", "user:1"))
    assert first.created and second.created
    assert await on_own.run_state(first.run_id) is not None


async def test_a_reply_owed_when_redis_dies_fails_with_a_connection_error_and_the_next_call_works(
    on_own: EventStore, own_redis: RedisServer
) -> None:
    await on_own.submit(SubmitRequest("echo", "user:1"))  # connected
    own_redis.client().execute_command("CLIENT", "PAUSE", "5000", "ALL")
    owed = asyncio.ensure_future(on_own.submit(SubmitRequest("echo", "user:1")))
    await asyncio.sleep(0.2)
    assert not owed.done()  # written, waiting for the paused server
    own_redis.kill()
    with pytest.raises(redis.exceptions.ConnectionError):
        await asyncio.wait_for(owed, 5)
    own_redis.start()
    # the scripts are gone with the restart: loading them again takes a pooled connection of
    # redis-py's, which may fail once on a socket that died idle (as any call of redis-py would)
    for attempt in range(2):
        try:
            assert (await on_own.submit(SubmitRequest("echo", "user:1"))).created
            break
        except redis.exceptions.ConnectionError:
            assert attempt == 0


async def test_a_batch_redis_does_not_answer_in_time_fails_with_a_timeout(own_redis: RedisServer) -> None:
    client = redis_from_url(own_redis.url)
    channel = ScriptChannel.of(client, timeout_s=0.3)
    assert channel is not None
    replies: list[Any] = []
    try:
        channel.send([("PING",)], [replies.append])
        await _until(lambda: bool(replies))
        assert replies == [b"PONG"]
        own_redis.client().execute_command("CLIENT", "PAUSE", "2000", "ALL")
        channel.send([("PING",), ("PING",)], [replies.append, replies.append])
        await _until(lambda: len(replies) == 3)
        assert all(isinstance(r, redis.exceptions.TimeoutError) for r in replies[1:])
    finally:
        await channel.close()
        await client.aclose()


async def test_closing_the_channel_fails_what_is_owed_and_leaves_no_task(own_redis: RedisServer) -> None:
    client = redis_from_url(own_redis.url)
    channel = ScriptChannel.of(client, timeout_s=10)
    assert channel is not None
    replies: list[Any] = []
    own_redis.client().execute_command("CLIENT", "PAUSE", "2000", "ALL")
    channel.send([("PING",)], [replies.append])
    await asyncio.sleep(0.2)
    await channel.close()
    assert len(replies) == 1 and isinstance(replies[0], redis.exceptions.ConnectionError)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not [t for t in others if "ScriptChannel" in repr(t)]
    await client.aclose()


def _evalsha_calls(server: RedisServer) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def _until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_batch_sent_again_after_a_lost_reply_writes_each_event_once(batched: EventStore) -> None:
    """Redis can die after writing a batch and before answering: the worker sends it again (with
    whatever was emitted meanwhile), numbered as before, and only the new events are written."""
    from agentstream.core.events import NewEvent

    await batched.ensure_groups(["echo"])
    claim = await _running(batched)
    first = [NewEvent("x.n", {"i": i}) for i in range(1, 4)]
    await batched.append_many(claim.run_id, claim.attempt, first, first_index=1)
    more = [*first, NewEvent("x.n", {"i": 4}), NewEvent("x.n", {"i": 5})]
    again = await batched.append_many(claim.run_id, claim.attempt, more, first_index=1)
    assert again.last_seq == claim.seq + 5
    last = [NewEvent("x.n", {"i": 5}), NewEvent("x.n", {"i": 6})]  # 5 was written: the finish skips it
    seq = await batched.finish(claim.run_id, claim.attempt, "run.succeeded", {}, events=last, first_index=5)
    events = await batched.read_run(claim.run_id, after_seq=claim.seq)
    assert [e.payload.get("i") for e in events] == [1, 2, 3, 4, 5, 6, None]
    assert [e.seq for e in events] == list(range(claim.seq + 1, seq + 1))
    # a new attempt numbers its events from 1 again
    second = await _running(batched)
    await batched.append_many(second.run_id, second.attempt, first[:1], first_index=1)
    assert [e.type for e in await batched.read_run(second.run_id)][-1] == "x.n"


async def test_an_argument_that_does_not_pack_fails_its_batch_instead_of_hanging(on_own: EventStore) -> None:
    tag = on_own.keys.tag(0) + ":"
    with pytest.raises(redis.exceptions.DataError):
        await asyncio.wait_for(on_own._run_script("promote_due", [on_own.keys.delayed(0)], [tag, None]), 5)
    assert await on_own.promote_due(0) == (0, None)  # the channel goes on

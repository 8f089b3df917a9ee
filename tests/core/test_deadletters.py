from __future__ import annotations

import pytest

from agentstream.core.deadletters import list_dead, purge_dead, retry_dead
from agentstream.core.errors import NotFound
from agentstream.core.store import EventStore, SubmitRequest
from tests.core.storetools import claim


async def dead_run(store: EventStore) -> str:
    run_id = (
        await store.submit(
            SubmitRequest(
                agent_key="a", owner="user:9", messages=[{"role": "user", "content": "x"}], max_attempts=1
            )
        )
    ).run_id
    c = await claim(store, run_id)
    await store.schedule_retry(run_id, c.attempt, 0, {"type": "Boom", "message": "always"})
    return run_id


async def test_a_dead_letter_is_listed_replayed_as_a_new_run_and_removed(store: EventStore) -> None:
    run_id = await dead_run(store)
    [letter] = await list_dead(store)
    assert (letter.run_id, letter.reason) == (run_id, "retries exhausted")

    new_id = await retry_dead(store, run_id)

    assert new_id != run_id
    [queued] = await store.read_run(new_id)
    assert queued.payload["messages"] == [{"role": "user", "content": "x"}]
    assert queued.payload["metadata"] == {"retry_of": run_id}
    assert queued.payload["owner"] == "user:9"
    assert await list_dead(store) == []
    old = await store.run_state(run_id)
    assert old is not None and old.status == "failed"  # the dead run itself stays failed


async def test_replaying_an_unknown_dead_letter_says_how_to_find_them(store: EventStore) -> None:
    with pytest.raises(NotFound, match="agentstream dead list"):
        await retry_dead(store, "00000000-0000-4000-8000-000000000000")


async def test_purge_removes_every_dead_letter(store: EventStore) -> None:
    await dead_run(store)
    await dead_run(store)
    assert await purge_dead(store) == 2
    assert await list_dead(store) == []


async def test_a_dead_letter_behind_a_thousand_others_of_its_partition_is_replayed(store: EventStore) -> None:
    """retry_dead looked only at the first 1,000 letters of each partition: after a poison storm
    a later run's letter was 'not found'."""
    async with store.redis.pipeline(transaction=False) as pipe:
        for partition in range(store.settings.PARTITIONS):
            for i in range(1001):
                pipe.xadd(store.keys.dead(partition), {"r": f"other-{i}", "reason": "filler", "ts": "0"})
        await pipe.execute()
    run_id = await dead_run(store)
    new_id = await retry_dead(store, run_id)
    [queued] = await store.read_run(new_id)
    assert queued.payload["metadata"] == {"retry_of": run_id}


async def test_a_replayed_run_keeps_its_timeout(store: EventStore) -> None:
    run_id = (
        await store.submit(SubmitRequest(agent_key="a", owner="user:9", max_attempts=1, timeout_s=3600.0))
    ).run_id
    c = await claim(store, run_id)
    assert c.timeout_s == 3600.0
    await store.schedule_retry(run_id, c.attempt, 0, {"type": "Boom", "message": "always"})
    new_id = await retry_dead(store, run_id)
    assert (await claim(store, new_id)).timeout_s == 3600.0


async def test_a_replayed_run_keeps_its_place_in_its_conversation_and_a_second_replay_makes_no_second_run(
    store: EventStore,
) -> None:
    """It answered after the conversation's latest run instead of where the dead one stood; and a
    replay whose letter was not removed (the command died after the submit; two operators at
    once) queued the run again."""
    conversation = await store.create_conversation("user:9", agent_key="a")
    run_id = (
        await store.submit(
            SubmitRequest(
                agent_key="a",
                owner="user:9",
                conversation_id=conversation,
                parent_message_id="ROOT",
                policy="enqueue",
                max_attempts=1,
            )
        )
    ).run_id
    c = await claim(store, run_id)
    await store.schedule_retry(run_id, c.attempt, 0, {"type": "Boom", "message": "always"})
    [letter] = await list_dead(store)
    [(_, fields)] = await store.redis.xrange(store.keys.dead(letter.partition))

    first = await retry_dead(store, run_id)
    await store.redis.xadd(store.keys.dead(letter.partition), fields)  # as if it was never removed
    second = await retry_dead(store, run_id)

    assert first == second != run_id
    [queued] = await store.read_run(first)
    assert queued.payload["parent_message_id"] == "ROOT" and queued.payload["policy"] == "enqueue"
    assert queued.payload["conversation_id"] == conversation
    assert await list_dead(store) == []


async def test_replaying_a_run_submitted_to_interrupt_does_not_cancel_the_conversations_active_run(
    store: EventStore,
) -> None:
    """The replay kept the dead run's policy: one submitted with 'interrupt' (the user's double
    text, then) cancelled whatever run its conversation was running when the operator replayed it."""
    conversation = await store.create_conversation("user:9", agent_key="a")

    async def submit(policy: str, max_attempts: int = 3) -> str:
        request = SubmitRequest(
            agent_key="a",
            owner="user:9",
            conversation_id=conversation,
            policy=policy,
            max_attempts=max_attempts,
        )
        return (await store.submit(request)).run_id

    dead = await submit("interrupt", max_attempts=1)
    c = await claim(store, dead)
    await store.schedule_retry(dead, c.attempt, 0, {"type": "Boom", "message": "always"})
    active = await submit("enqueue")
    await claim(store, active)

    replayed = await retry_dead(store, dead)

    state = await store.run_state(active)
    assert state is not None and state.status == "running" and not state.cancel_requested
    assert [e.type for e in await store.read_run(active)] == ["run.queued", "run.started"]
    [queued] = await store.read_run(replayed)
    assert queued.payload["policy"] == "enqueue"  # after the active run, where it waits its turn

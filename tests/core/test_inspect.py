from __future__ import annotations

from agentstream.core.events import EventType
from agentstream.core.inspect import Counters, deployment_status
from agentstream.core.store import Claim, Dropped, EventStore, SubmitRequest
from tests.core.storetools import begin_again, claim


async def test_status_counts_waiting_pending_delayed_and_lag_from_redis(store: EventStore) -> None:
    runs = [(await store.submit(SubmitRequest(agent_key="a", owner="user:1"))).run_id for _ in range(4)]
    await store.submit(SubmitRequest(agent_key="b", owner="user:1", run_at_ms=2**41))
    partition = store.keys.run_partition(runs[0])
    in_partition = sum(store.keys.run_partition(r) == partition for r in runs)
    running = await claim(store, runs[0])  # reads every job of that partition's queue
    await store.redis.xgroup_create(store.keys.log(partition), "projection:test", id="0", mkstream=True)

    status = await deployment_status(store)

    [a] = [q for q in status.queues if q.agent_key == "a"]
    assert (a.pending, a.waiting) == (in_partition, 4 - in_partition)
    assert a.consumers == 1 and a.oldest_pending_age_s >= 0
    assert status.delayed == 1  # the scheduled run of agent b
    assert status.dead_letters == 0
    assert [g.group for g in status.projections] == ["projection:test"]
    assert status.projections[0].lag == len(await store.read_log(partition))

    await store.finish(runs[0], running.attempt, EventType.RUN_SUCCEEDED, {})
    [a_after] = [q for q in (await deployment_status(store)).queues if q.agent_key == "a"]
    assert (a_after.pending, a_after.waiting) == (in_partition - 1, 4 - in_partition)


async def log_entries(store: EventStore) -> int:
    return sum([await store.redis.xlen(store.keys.log(p)) for p in range(store.keys.partitions)])


async def test_deployment_counters_are_counted_by_the_transition_scripts_and_never_go_down(
    store: EventStore,
) -> None:
    assert (await deployment_status(store)).counters == Counters()  # no keys yet: zeros, no error

    retried = (await store.submit(SubmitRequest(agent_key="a", owner="user:1"))).run_id
    first = await claim(store, retried)
    assert (await store.schedule_retry(retried, first.attempt, 0, {"type": "Boom"})).retrying
    await store.promote_due(store.keys.run_partition(retried))
    second = await claim(store, retried)
    assert second.attempt == 2  # a retry's next attempt is not a reclaim
    await store.finish(retried, second.attempt, EventType.RUN_SUCCEEDED, {})

    # a job whose worker died: reclaimed (attempt 2), reclaimed again past its cap -> dead letter
    poison = (await store.submit(SubmitRequest(agent_key="a", owner="user:1", max_attempts=2))).run_id
    await claim(store, poison)
    assert isinstance(await begin_again(store, poison), Claim)
    assert isinstance(await begin_again(store, poison, worker="w3"), Dropped)

    cancelled = (await store.submit(SubmitRequest(agent_key="a", owner="user:1"))).run_id
    await store.cancel(cancelled, reason="changed my mind")

    counters = (await deployment_status(store)).counters
    assert (counters.retries, counters.reclaims, counters.dead_letters) == (1, 2, 1)
    assert counters.finished == {"succeeded": 1, "failed": 1, "cancelled": 1}
    assert counters.log_events == await log_entries(store) > 0

    for p in range(store.keys.partitions):  # the projector trims what every group acknowledged
        await store.redis.xtrim(store.keys.log(p), maxlen=0)
    after_trim = (await deployment_status(store)).counters
    assert after_trim.log_events == counters.log_events and await log_entries(store) == 0

from __future__ import annotations

from agentstream.core.events import EventType
from agentstream.core.inspect import deployment_status
from agentstream.core.store import EventStore, SubmitRequest
from tests.core.storetools import claim


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

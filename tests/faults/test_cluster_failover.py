"""A master of a Redis Cluster killed -9 and replaced by its replica: runs of its partitions go
on (the client follows the new slot map, the new master learns the scripts on NOSCRIPT), an SSE
client of one of them gets its next event, and the cancel broadcast is heard again (the listener
moves to another node)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from agentstream.consumers.cancel_listener import CancelListener
from agentstream.core.events import EventType
from agentstream.core.settings import Settings
from agentstream.core.store import Claim, EventStore, SubmitRequest, redis_from_url
from agentstream.django_app.sse.buffers import AsyncBuffer
from agentstream.django_app.sse.hub import Hub
from tests.cluster import RedisClusterServers, binaries
from tests.core.storetools import claim
from tests.services import require, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.redis, pytest.mark.cluster]
T = TypeVar("T")


@pytest.fixture
def cluster_with_replicas(tmp_path: Path) -> Iterator[RedisClusterServers]:
    require("redis-server and redis-cli (Redis Cluster tests)", binaries() is not None)
    servers = RedisClusterServers(tmp_path / "cluster", replicas=1)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


async def until_redis_answers(call: Callable[[], Awaitable[T]], timeout_s: float = 30) -> T:
    """What the workers do during a failover: retry until the cluster answers (a deadline backstop)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.ClusterDownError, redis.exceptions.RedisClusterException):  # fmt: skip
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)  # a retry delay, not synchronisation


def request() -> SubmitRequest:
    return SubmitRequest(agent_key="a", owner="user:1", messages=[{"role": "user", "content": "hi"}])


async def test_after_a_master_fails_over_its_runs_go_on_and_cancels_are_heard(
    cluster_with_replicas: RedisClusterServers,
) -> None:
    servers = cluster_with_replicas
    client = redis_from_url(servers.url)
    store = EventStore(
        client, Settings(KEY_PREFIX=f"t{uuid.uuid4().hex[:8]}", PARTITIONS=6), pipeline_scripts=True
    )
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = CancelListener(client, store.keys.cancel_channel(), heard.put_nowait)
    listening = asyncio.create_task(listener.run())
    hub = Hub(store.settings, url=servers.url, block_ms=2000)
    try:
        await asyncio.wait_for(listener.ready.wait(), 10)
        claims: list[Claim] = [await claim(store, (await store.submit(request())).run_id) for _ in range(24)]
        victim = servers.master_of(store.keys.run_stream(claims[0].run_id))
        on_victim = [c for c in claims if servers.master_of(store.keys.run_stream(c.run_id)) == victim]
        watching = AsyncBuffer(100)  # an SSE client of a run whose master is about to die
        await hub.subscribe(on_victim[0].run_id, on_victim[0].seq, watching)
        with redis.Redis(port=victim) as node:
            assert node.execute_command("WAIT", 1, 5000) == 1  # the replica has every write
        for port in servers.ports:  # the replica that takes over never saw the scripts
            with redis.Redis(port=port) as node:
                node.script_flush()

        servers.kill(victim)
        await asyncio.to_thread(
            lambda: wait_until(
                lambda: servers.ok() and victim not in servers.masters(), 30, "a replica to take over"
            )
        )

        # the runs of the failed-over partitions go on, on the new master
        for c in on_victim:
            await until_redis_answers(
                lambda c=c: store.append(c.run_id, c.attempt, EventType.ASSISTANT_MESSAGE, {})
            )
        # the SSE hub's read of that partition reconnected to the new master: the client sees it
        frames = await watching.take(20)
        assert frames is not None and frames[0].event.type == EventType.ASSISTANT_MESSAGE
        # a cancel published after the failover is heard (the listener resubscribed if it had to;
        # one published while it reconnects is missed by design: the heartbeat covers that gap)
        await asyncio.wait_for(listener.ready.wait(), 20)
        target = on_victim[0]
        outcome = await until_redis_answers(lambda: store.cancel(target.run_id, reason="failover"))
        assert not outcome.cancelled  # running: requested through the broadcast
        assert await asyncio.wait_for(heard.get(), 20) == target.run_id
        # and new runs land on every partition again, the failed-over ones included (run ids are
        # random: submit until every partition has one, rather than hope 24 cover them)
        fresh: dict[int, str] = {}
        for _ in range(500):
            if len(fresh) == store.keys.partitions:
                break
            submitted = await until_redis_answers(lambda: store.submit(request()))
            fresh.setdefault(store.keys.run_partition(submitted.run_id), submitted.run_id)
        assert len(fresh) == store.keys.partitions
        assert {servers.master_of(store.keys.run_stream(r)) for r in fresh.values()} == servers.masters()
    finally:
        await hub.close()
        listener.stop()
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await client.aclose()

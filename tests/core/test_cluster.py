"""Redis Cluster specifics: the URL, how reads are grouped by slot, scripts reloaded per node,
the cancel broadcast, and the SSE hub's connections staying constant in the number of clients."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from agentstream.core.cluster import FanIn, SlotRouting, cluster_from_url, is_cluster_url, stream_keys
from agentstream.core.events import EventType
from agentstream.core.settings import Settings
from agentstream.core.store import Claim, EventStore, HiredisPackConnection, SubmitRequest, redis_from_url
from tests.cluster import RedisClusterServers
from tests.conftest import delete_prefix
from tests.core.storetools import claim


def test_a_cluster_url_names_its_nodes_credentials_and_options() -> None:
    client = cluster_from_url("rediss+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001/0?max_connections=7")
    nodes = client.nodes_manager.startup_nodes
    assert sorted(nodes) == ["10.0.0.1:7000", "::1:7001"]
    kwargs = client.nodes_manager.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["max_connections"]) == ("u", "p@ss", 7)
    assert "SSL" in kwargs["connection_class"].__name__
    assert is_cluster_url("redis+cluster://h:1") and not is_cluster_url("redis://h:1")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://", "name at least one node"),
        ("redis+cluster://h:1/3", "database 0 only"),
        ("redis+cluster://h", "is not host:port"),
        ("redis+cluster://u:secret@h:1?pool=3", "unknown option 'pool'"),
    ],
)
def test_a_bad_cluster_url_says_what_to_fix_without_its_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        cluster_from_url(url)
    assert "secret" not in str(caught.value)


def test_a_cluster_client_packs_commands_with_hiredis_like_a_single_redis_client() -> None:
    client = redis_from_url("redis+cluster://127.0.0.1:1")
    assert isinstance(client, RedisCluster)
    assert client.nodes_manager.connection_kwargs["connection_class"] is HiredisPackConnection


def test_the_keys_of_stream_reads_are_found_without_asking_the_server() -> None:
    assert stream_keys(["XREAD", "COUNT", 5, "BLOCK", 0, "STREAMS", "a", "b", "0-0", "1-0"]) == ("a", "b")
    group_read = [b"XREADGROUP", b"GROUP", b"streams", b"c", b"NOACK", b"STREAMS", b"q", b">"]
    assert stream_keys(group_read) == (b"q",)
    assert stream_keys(["XREAD", "STREAMS", "a", "b", "c"]) is None  # odd: left to the server
    assert stream_keys(["GET", "a"]) is None


def test_a_single_redis_reads_every_partition_in_one_command_a_cluster_one_per_partition() -> None:
    items = [(p, f"q{p}") for p in (3, 0, 3, 1)]
    assert SlotRouting(clustered=False).group(items, lambda i: i[0]) == {0: items}
    assert SlotRouting(clustered=True).group(items, lambda i: i[0]) == {
        3: [(3, "q3"), (3, "q3")],
        0: [(0, "q0")],
        1: [(1, "q1")],
    }


async def test_a_blocking_fan_in_returns_the_first_answer_and_keeps_the_slower_one_for_later() -> None:
    fan_in: FanIn[int, str] = FanIn()
    slow = asyncio.Event()

    async def fast_read() -> str:
        return "fast"

    async def slow_read() -> str:
        await slow.wait()
        return "slow"

    assert await fan_in.wait({1: fast_read, 2: slow_read}) == [(1, "fast")]
    assert fan_in.busy(2) and not fan_in.busy(1)
    slow.set()
    await asyncio.sleep(0)  # let the slow read finish
    # a new round does not start a second read of group 2: it collects the first one's answer
    assert sorted(await fan_in.wait({1: fast_read, 2: slow_read})) == [(1, "fast"), (2, "slow")]
    await fan_in.close()


async def test_a_failed_group_read_never_hides_the_answers_of_the_others() -> None:
    fan_in: FanIn[int, str] = FanIn()
    gate = asyncio.Event()

    async def fails() -> str:
        await gate.wait()
        raise ConnectionError("node down")

    async def answers() -> str:
        await gate.wait()
        return "jobs"

    waiting = asyncio.create_task(fan_in.wait({1: fails, 2: answers}))
    await asyncio.sleep(0)
    gate.set()
    got = await waiting
    got += await fan_in.wait({}) if fan_in.pending else []
    assert got == [(2, "jobs")]
    with pytest.raises(ConnectionError, match="node down"):
        await fan_in.wait({1: fails})


# -- on a real cluster --------------------------------------------------------------------------


@pytest.fixture
async def cluster_store(cluster_url: str) -> AsyncIterator[EventStore]:
    client = redis_from_url(cluster_url)
    settings = Settings(KEY_PREFIX=f"t{uuid.uuid4().hex[:12]}", PARTITIONS=6)
    yield EventStore(client, settings, pipeline_scripts=True)
    await delete_prefix(client, settings.KEY_PREFIX)
    await client.aclose()


def request() -> SubmitRequest:
    return SubmitRequest(agent_key="a", owner="user:1", messages=[{"role": "user", "content": "hi"}])


async def running_runs(store: EventStore, n: int) -> list[Claim]:
    """``n`` runs, each submitted and started by a worker (so a cancel goes through the broadcast)."""
    return [await claim(store, (await store.submit(request())).run_id) for _ in range(n)]


@pytest.mark.redis
@pytest.mark.cluster
async def test_pipelined_scripts_reload_on_every_node_that_lost_them(
    cluster_store: EventStore, redis_cluster: RedisClusterServers
) -> None:
    """A node that never saw a script (a new master, a failover, SCRIPT FLUSH) answers NOSCRIPT;
    the batch reloads it and every call in the batch still succeeds."""
    for port in redis_cluster.ports:
        with redis.Redis(port=port) as node:
            node.script_flush()
    results = await asyncio.gather(*(cluster_store.submit(request()) for _ in range(60)))
    partitions = {cluster_store.keys.run_partition(r.run_id) for r in results}
    assert len(partitions) > 3 and all(r.created for r in results)
    nodes = {redis_cluster.master_of(cluster_store.keys.run_stream(r.run_id)) for r in results}
    assert nodes == redis_cluster.masters()
    states = await asyncio.gather(*(cluster_store.run_state(r.run_id) for r in results))
    assert all(s is not None and s.status == "queued" for s in states)


@pytest.mark.redis
@pytest.mark.cluster
async def test_a_cancel_published_on_any_master_reaches_a_worker_listening_on_another(
    cluster_store: EventStore, redis_cluster: RedisClusterServers
) -> None:
    from agentstream.consumers.cancel_listener import CancelListener

    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = CancelListener(cluster_store.redis, cluster_store.keys.cancel_channel(), heard.put_nowait)
    listening = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.ready.wait(), 10)
        by_node: dict[int, str] = {}
        masters = redis_cluster.masters()
        for _ in range(200):  # a run on every master
            [started] = await running_runs(cluster_store, 1)
            by_node.setdefault(
                redis_cluster.master_of(cluster_store.keys.run_stream(started.run_id)), started.run_id
            )
            if len(by_node) == len(masters):
                break
        assert len(by_node) == 3, "the runs should span every master"
        for run_id in by_node.values():
            assert not (await cluster_store.cancel(run_id, reason="test")).cancelled  # requested
        got = {await asyncio.wait_for(heard.get(), 5) for _ in by_node}
        assert got == set(by_node.values())
    finally:
        listener.stop()
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


@pytest.mark.redis
@pytest.mark.cluster
async def test_the_sse_hub_holds_one_blocking_read_per_partition_whatever_the_number_of_clients(
    cluster_store: EventStore, cluster_url: str
) -> None:
    from agentstream.django_app.sse.buffers import AsyncBuffer
    from agentstream.django_app.sse.hub import Hub

    hub = Hub(cluster_store.settings, url=cluster_url, block_ms=5000)
    claims = await running_runs(cluster_store, 40)
    partitions = {cluster_store.keys.run_partition(c.run_id) for c in claims}

    def tail_connections() -> int:
        return sum(len(node._connections) for node in hub._blocking.get_nodes())  # type: ignore[union-attr]

    async def every_client_gets_the_next_event(clients: dict[str, list[AsyncBuffer]], event: str) -> None:
        for c in claims:
            await cluster_store.append(c.run_id, c.attempt, event)
        for run_id, buffers in clients.items():
            for buffer in buffers:
                frames = await buffer.take(10)
                assert frames is not None and frames[0].event.type == event, run_id

    try:
        few = {c.run_id: [AsyncBuffer(100)] for c in claims}
        for c in claims:
            await hub.subscribe(c.run_id, c.seq, few[c.run_id][0])
        await every_client_gets_the_next_event(few, EventType.ASSISTANT_MESSAGE)
        with_few = tail_connections()
        many = {c.run_id: [AsyncBuffer(100) for _ in range(5)] for c in claims}  # 200 more clients
        for c in claims:
            state = await cluster_store.run_state(c.run_id)
            assert state is not None
            for buffer in many[c.run_id]:
                await hub.subscribe(c.run_id, state.seq, buffer)
        assert hub.clients == 240 and hub.shards == len(partitions) > 3
        await every_client_gets_the_next_event(many, EventType.TOOL_CALL)
        # one per shard, plus the one the client discovered the cluster through
        bound = len(partitions) + 1
        assert with_few <= bound and tail_connections() <= bound, (with_few, tail_connections())
    finally:
        await hub.close()


@pytest.mark.redis
@pytest.mark.cluster
async def test_a_cluster_read_costs_no_command_getkeys_round_trip(
    cluster_store: EventStore, redis_cluster: RedisClusterServers
) -> None:
    def getkeys_calls() -> int:
        total = 0
        for port in redis_cluster.ports:
            with redis.Redis(port=port) as node:
                stats = node.info("commandstats")
            total += int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))
        return total

    run_id = (await cluster_store.submit(request())).run_id
    before = getkeys_calls()
    for _ in range(5):
        assert await cluster_store.tail({run_id: 0}, block_ms=100)
        await claim(cluster_store, (await cluster_store.submit(request())).run_id)  # XREADGROUP
    assert getkeys_calls() == before


@pytest.mark.redis
@pytest.mark.cluster
async def test_one_evicting_master_is_enough_for_the_cluster_to_be_refused(
    cluster_url: str, redis_cluster: RedisClusterServers
) -> None:
    from agentstream.core.errors import ConfigurationError
    from agentstream.core.eviction import ensure_noeviction

    client = redis_from_url(cluster_url)
    evicting = sorted(redis_cluster.masters())[-1]
    try:
        await ensure_noeviction(client, Settings(REDIS_URL=cluster_url))  # every node: noeviction
        with redis.Redis(port=evicting) as node:
            node.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(ConfigurationError, match="maxmemory-policy 'allkeys-lru'"):
            await ensure_noeviction(client, Settings(REDIS_URL=cluster_url))
    finally:
        with redis.Redis(port=evicting) as node:
            node.config_set("maxmemory-policy", "noeviction")
        await client.aclose()

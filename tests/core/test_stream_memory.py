"""What docs/operations.md says of ``stream-node-max-bytes``, checked on a redis-server of the
test's own: Redis gives a new stream node a buffer of ``min(4096, stream-node-max-bytes)`` bytes
up front and shrinks it only when the node fills, so a short run's stream keeps it until it
expires. Should a Redis version stop doing that, this fails and the advice needs revisiting."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentstream.core.events import NewEvent
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, SubmitRequest, redis_from_url
from tests.core.storetools import claim
from tests.faults.topology import running_redis


async def _finished_run_stream_bytes(url: str) -> int:
    client = redis_from_url(url)
    store = EventStore(client, Settings(KEY_PREFIX="mem", PARTITIONS=4))
    try:
        run = await store.submit(SubmitRequest("a", "user:1", messages=[{"role": "user", "content": "hi"}]))
        begun = await claim(store, run.run_id)
        message = NewEvent("assistant.message", {"role": "assistant", "content": "ok"})
        await store.finish(run.run_id, begun.attempt, "run.succeeded", {"output": {}}, events=[message])
        assert len(await store.read_run(run.run_id)) == 4
        return int(await client.memory_usage(store.keys.run_stream(run.run_id)))
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("node_max_bytes", "low", "high"),
    [(4096, 4096, 6000), (1024, 1024, 2048)],
    ids=["default 4096", "recommended 1024"],
)
async def test_a_short_runs_stream_keeps_the_node_buffer_stream_node_max_bytes_sizes(
    tmp_path: Path, node_max_bytes: int, low: int, high: int
) -> None:
    args = ("--maxmemory-policy", "noeviction", "--stream-node-max-bytes", str(node_max_bytes))
    for server in running_redis(tmp_path / "redis", *args):
        assert low <= await _finished_run_stream_bytes(server.url) < high

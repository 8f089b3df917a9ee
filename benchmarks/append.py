"""``append``: the store's append paths next to the raw pipelined XADD ceiling, in one run.

Each round runs, alternating: the ceiling (``limit``'s pipelined XADD), then
* ``append``: one awaited script call per event (what a naive caller does);
* ``append_many``: batches of 50 events per call, one run at a time;
* ``append_many x16``: 16 runs appending batches concurrently through the pipelining store
  (a worker with concurrency 16) — the path workers take.
Events are ``tool.call`` (state events: run stream AND partition log, i.e. two XADDs each).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import redis.asyncio as aioredis

from agentstream.core.events import NewEvent
from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.settings import Settings
from agentstream.core.store import Claim, EventStore, SubmitRequest
from benchmarks.common import Options, Record, summarize
from benchmarks.limit import pipelined_xadd

BATCH = 50


async def running_run(store: EventStore) -> tuple[str, int]:
    """A run claimed by a benchmark worker, ready for appends."""
    run_id = (await store.submit(SubmitRequest(agent_key="bench", owner="user:bench"))).run_id
    queue = store.keys.queue(store.keys.run_partition(run_id), "bench")
    reply = await store.redis.xreadgroup(WORKERS_GROUP, "bench", {queue: ">"}, count=1000)
    job = next(j for _, entries in reply for j, f in entries if f[b"r"].decode() == run_id)
    claim = await store.begin_attempt(run_id, job.decode(), "bench", "bench")
    assert isinstance(claim, Claim)
    return run_id, claim.attempt


def events(n: int) -> list[NewEvent]:
    return [NewEvent("tool.call", {"name": "clock", "i": i}) for i in range(n)]


async def one_by_one(store: EventStore, n: int) -> float:
    run_id, attempt = await running_run(store)
    start = time.perf_counter()
    for i in range(n):
        await store.append(run_id, attempt, "tool.call", {"name": "clock", "i": i})
    return n / (time.perf_counter() - start)


async def batched(store: EventStore, n: int) -> float:
    run_id, attempt = await running_run(store)
    batch = events(BATCH)
    start = time.perf_counter()
    for _ in range(n // BATCH):
        await store.append_many(run_id, attempt, batch)
    return (n // BATCH) * BATCH / (time.perf_counter() - start)


async def batched_concurrent(store: EventStore, n: int, runs: int = 16) -> float:
    claimed = [await running_run(store) for _ in range(runs)]
    batch = events(BATCH)
    per_run = n // runs // BATCH

    async def writer(run_id: str, attempt: int) -> None:
        for _ in range(per_run):
            await store.append_many(run_id, attempt, batch)

    start = time.perf_counter()
    await asyncio.gather(*(writer(r, a) for r, a in claimed))
    return per_run * BATCH * runs / (time.perf_counter() - start)


async def main(opts: Options) -> list[Record]:
    n = opts.size(100_000, 5_000)
    client = aioredis.Redis.from_url(opts.redis_url)
    samples: dict[str, list[float]] = {k: [] for k in ("ceiling", "append", "append_many", "append_many x16")}
    try:
        for _ in range(opts.rounds):
            prefix = f"bench{uuid.uuid4().hex[:8]}"
            settings = Settings(KEY_PREFIX=prefix, PARTITIONS=16)
            plain = EventStore(client, settings)
            piped = EventStore(client, settings, pipeline_scripts=True)
            await plain.ensure_groups(["bench"])
            raw_key = f"{prefix}:raw"
            try:
                samples["ceiling"].append(await pipelined_xadd(client, raw_key, n))
                samples["append"].append(await one_by_one(plain, n // 10))
                samples["append_many"].append(await batched(plain, n))
                samples["append_many x16"].append(await batched_concurrent(piped, n))
            finally:
                async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                    await client.delete(key)
    finally:
        await client.aclose()
    records = [
        summarize("append", "redis-py" if name == "ceiling" else "agentstream", name, "events/s", n, values)
        for name, values in samples.items()
    ]
    for name in ("append_many", "append_many x16"):
        ratios = [v / c for v, c in zip(samples[name], samples["ceiling"], strict=True)]
        records.append(summarize("append", "agentstream", f"{name} / ceiling", "ratio", n, ratios))
    return records

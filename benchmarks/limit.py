"""``limit``: the Python ceiling on this machine, the yardstick for every other scenario.

* pipelined XADD from redis-py (1,000 per pipeline) — events/s
* XREADGROUP (COUNT 100) + pipelined XACK over the same entries — entries/s
"""

from __future__ import annotations

import time
import uuid

import redis.asyncio as aioredis

from benchmarks.common import Options, Record, summarize

FIELDS = {
    "r": "0" * 36,
    "s": 1,
    "t": "tool.call",
    "p": b"\x81\xa4name\xa5clock",
    "ts": 1,
    "a": 1,
    "vis": "debug",
}


async def pipelined_xadd(client: aioredis.Redis, key: str, n: int, chunk: int = 1000) -> float:
    start = time.perf_counter()
    for offset in range(0, n, chunk):
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(min(chunk, n - offset)):
                pipe.xadd(key, FIELDS)  # type: ignore[arg-type]
            await pipe.execute()
    return n / (time.perf_counter() - start)


async def readgroup_ack(client: aioredis.Redis, key: str, n: int) -> float:
    await client.xgroup_create(key, "g", id="0", mkstream=True)
    start = time.perf_counter()
    done = 0
    while done < n:
        reply = await client.xreadgroup("g", "c", {key: ">"}, count=100)
        if not reply:
            break
        ids = [entry_id for _, entries in reply for entry_id, _ in entries]
        await client.xack(key, "g", *ids)
        done += len(ids)
    return done / (time.perf_counter() - start)


async def main(opts: Options) -> list[Record]:
    n = opts.size(100_000, 5_000)
    client = aioredis.Redis.from_url(opts.redis_url)
    adds: list[float] = []
    reads: list[float] = []
    try:
        for _ in range(opts.rounds):
            key = f"bench:limit:{uuid.uuid4().hex}"
            try:
                adds.append(await pipelined_xadd(client, key, n))
                reads.append(await readgroup_ack(client, key, n))
            finally:
                await client.delete(key)
    finally:
        await client.aclose()
    return [
        summarize("limit", "redis-py", "pipelined XADD", "events/s", n, adds),
        summarize("limit", "redis-py", "XREADGROUP+XACK", "entries/s", n, reads),
    ]

"""``projector``: events/s from the partition logs into PostgreSQL for ONE projector process, and
the lag (commit time - event time) at a sustained 5,000 events/s, next to a naive projector that
makes ORM calls per event (what a port of the seed would do).

The logs are filled with entries in exactly the form the Lua scripts write (``r s t p ts a vis c``),
by pipelined XADD, so the figure is the projector's and not the producer's. Each run has 12 state
events: run.queued, run.started, 4 x (tool.call, tool.result), assistant.message, run.succeeded.
The database is a fresh one of the benchmark's own (``bench_projections``), migrated first.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack

from benchmarks.common import Options, Record, summarize
from benchmarks.django_env import setup_database

PARTITIONS = 16
EVENTS_PER_RUN = 12


# -- Django: the shared configuration, with a database of the benchmark's own -----------------


def setup_django(database_url: str) -> None:
    setup_database(database_url)


def truncate_read_models() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE agentstream_run, agentstream_conversation, agentstream_event, agentstream_conversationevent, "
            "agentstream_checkpoint, agentstream_projectioncheckpoint, agentstream_skippedentry"
        )
    connection.close()


# -- the history: entries as the Lua scripts write them ------------------------------------


def run_entries(run_id: str, ts_ms: int) -> Iterator[dict[str, Any]]:
    """One run's 12 state events, as partition-log fields."""

    def entry(seq: int, kind: str, payload: dict[str, Any], attempt: int) -> dict[str, Any]:
        return {
            "r": run_id, "s": seq, "t": kind, "p": msgpack.packb(payload), "ts": ts_ms + seq,
            "a": attempt, "vis": "user", "c": "",
        }  # fmt: skip

    yield entry(1, "run.queued", {
        "agent_key": "bench", "owner": "user:1", "conversation_id": None,
        "messages": [{"role": "user", "content": "what time is it?"}], "params": {}, "metadata": {},
        "max_attempts": 3, "run_at_ms": None, "timeout_s": 900.0, "idempotency_key": None, "policy": "enqueue",
    }, 0)  # fmt: skip
    yield entry(2, "run.started", {"worker": "bench"}, 1)
    seq = 3
    for i in range(4):
        yield entry(seq, "tool.call", {"id": f"t{i}", "name": "clock", "arguments": {"tz": "UTC"}}, 1)
        yield entry(seq + 1, "tool.result", {"id": f"t{i}", "name": "clock", "result": "12:00"}, 1)
        seq += 2
    yield entry(seq, "assistant.message", {"role": "assistant", "content": "It is noon."}, 1)
    yield entry(seq + 1, "run.succeeded", {
        "output": {"text": "It is noon."}, "final_messages": [{"role": "assistant", "content": "It is noon."}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}, "artifacts": {},
    }, 1)  # fmt: skip


async def fill_logs(redis: Any, keys: Any, runs: int) -> int:
    from agentstream.core.ids import partition_of

    now_ms = time.time_ns() // 1_000_000
    n = 0
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(runs):
            run_id = str(uuid.uuid4())
            log_key = keys.log(partition_of(run_id, keys.partitions))
            for fields in run_entries(run_id, now_ms):
                pipe.xadd(log_key, fields)
                n += 1
            if i % 200 == 199:
                await pipe.execute()
        await pipe.execute()
    return n


async def delete_prefix(redis: Any, prefix: str) -> None:
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
    for i in range(0, len(keys), 500):
        await redis.delete(*keys[i : i + 500])


# -- the systems ----------------------------------------------------------------------------


async def agentstream_throughput(opts: Options, runs: int) -> float:
    from agentstream.core.keys import Keys
    from agentstream.core.store import redis_from_url
    from agentstream.projections.projection import ReadModelProjection
    from agentstream.projections.projector import Projector, ProjectorOptions

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, PARTITIONS)
    redis = redis_from_url(opts.redis_url)
    try:
        await asyncio.to_thread(truncate_read_models)
        n = await fill_logs(redis, keys, runs)
        projector = Projector(redis, keys, ReadModelProjection(), options=ProjectorOptions(batch=500))
        start = time.perf_counter()
        await projector.run(burst=True)
        elapsed = time.perf_counter() - start
        assert projector.applied == n, (projector.applied, n)
        return n / elapsed
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()


def naive_apply(events: list[Any]) -> None:
    """Per event: one ORM insert into the archive, one ORM update (or create) of the run."""
    from django.db import connection, transaction

    from agentstream.django_app.models import Event, Run
    from agentstream.projections.rows import STATUS_OF_EVENT
    from agentstream.projections.sql import ms_to_datetime

    with transaction.atomic():
        for e in events:
            Event.objects.get_or_create(
                run_id=e.run_id, seq=e.seq,
                defaults={"type": e.type, "payload": dict(e.payload), "ts": ms_to_datetime(e.ts_ms),
                          "attempt": e.attempt, "visibility": e.visibility.value},
            )  # fmt: skip
            run, _ = Run.objects.get_or_create(id=e.run_id)
            run.last_seq = max(run.last_seq, e.seq)
            status = STATUS_OF_EVENT.get(e.type)
            if status is not None and e.seq > run.status_seq:
                run.status, run.status_seq = status, e.seq
            run.save()
    connection.close()


async def naive_throughput(opts: Options, runs: int) -> float:
    from agentstream.core.keys import Keys
    from agentstream.core.store import redis_from_url
    from agentstream.projections.projection import ReadModelProjection
    from agentstream.projections.projector import Projector

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, PARTITIONS)
    redis = redis_from_url(opts.redis_url)
    try:
        await asyncio.to_thread(truncate_read_models)
        n = await fill_logs(redis, keys, runs)
        reader = Projector(redis, keys, ReadModelProjection())
        await reader.ensure_groups()
        start = time.perf_counter()
        done = 0
        while True:
            delivery = await reader.read(block_ms=None)
            if delivery.size == 0:
                break
            await asyncio.to_thread(naive_apply, delivery.events)
            await reader.ack(delivery)
            done += delivery.size
        elapsed = time.perf_counter() - start
        await reader.close()
        assert done == n, (done, n)
        return done / elapsed
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()


# -- lag at a sustained rate ------------------------------------------------------------------


def produce(redis_url: str, prefix: str, rate_per_s: int, duration_s: float, ready: Any) -> None:
    """A producer process: XADD whole runs to the logs at ``rate_per_s`` events per second."""
    import redis as sync_redis

    from agentstream.core.ids import partition_of
    from agentstream.core.keys import Keys

    keys = Keys(prefix, PARTITIONS)
    client = sync_redis.Redis.from_url(redis_url)
    ready.wait()
    tick_s = 0.01
    runs_per_tick = max(1, round(rate_per_s * tick_s / EVENTS_PER_RUN))
    start = time.perf_counter()
    ticks = 0
    while time.perf_counter() - start < duration_s:
        pipe = client.pipeline(transaction=False)
        now_ms = time.time_ns() // 1_000_000
        for _ in range(runs_per_tick):
            run_id = str(uuid.uuid4())
            for fields in run_entries(run_id, now_ms - EVENTS_PER_RUN):  # ts = now for the whole run
                pipe.xadd(keys.log(partition_of(run_id, PARTITIONS)), fields)
        pipe.execute()
        ticks += 1
        pause = start + ticks * tick_s - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    client.close()


async def lag_at_rate(opts: Options, rate_per_s: int, duration_s: float) -> tuple[float, float, float]:
    """(p50, p99 lag in ms, achieved events/s) while a producer process writes at ``rate_per_s``."""
    from agentstream.core.keys import Keys
    from agentstream.core.store import redis_from_url
    from agentstream.projections.logs import lag
    from agentstream.projections.projection import ReadModelProjection
    from agentstream.projections.projector import Delivery, Projector, ProjectorOptions

    lags_ms: list[float] = []

    class Timed(Projector):
        async def ack(self, delivery: Delivery) -> None:
            committed_ms = time.time_ns() / 1_000_000
            lags_ms.extend(committed_ms - e.ts_ms for e in delivery.events)
            await super().ack(delivery)

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, PARTITIONS)
    redis = redis_from_url(opts.redis_url)
    await asyncio.to_thread(truncate_read_models)
    projector = Timed(redis, keys, ReadModelProjection(), options=ProjectorOptions(batch=500, block_ms=20))
    await projector.ensure_groups()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    producer = ctx.Process(target=produce, args=(opts.redis_url, prefix, rate_per_s, duration_s, ready))
    producer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop=stop))
    try:
        await asyncio.sleep(0.5)  # the projector is idle and blocking on XREADGROUP
        ready.set()
        start = time.perf_counter()
        await asyncio.to_thread(producer.join)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # drain what is left, then stop
            behind = await lag(redis, keys, projector.group)
            if all(p.pending == 0 and p.undelivered == 0 for p in behind):
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
        stop.set()
        await task
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
    lags_ms.sort()
    p50 = statistics.median(lags_ms)
    p99 = lags_ms[min(len(lags_ms) - 1, int(len(lags_ms) * 0.99))]
    return p50, p99, len(lags_ms) / elapsed


async def main(opts: Options) -> list[Record]:
    await asyncio.to_thread(setup_django, opts.database_url)
    runs = opts.size(full=20_000, quick=300)  # x 12 events
    naive_runs = 10 if opts.quick else max(100, runs // 100)  # ~150 events/s: a small sample says enough
    duration_s = 1.0 if opts.quick else 10.0
    ours: list[float] = []
    naive: list[float] = []
    p50s: list[float] = []
    p99s: list[float] = []
    for _ in range(max(3, opts.rounds)):
        ours.append(await agentstream_throughput(opts, runs))
        naive.append(await naive_throughput(opts, naive_runs))
        p50, p99, _rate = await lag_at_rate(opts, 5000, duration_s)
        p50s.append(p50)
        p99s.append(p99)
    n = runs * EVENTS_PER_RUN
    return [
        summarize("projector", "agentstream (COPY + upsert, batch 500)", "throughput", "events/s", n, ours),
        summarize(
            "projector", "naive ORM per event", "throughput", "events/s", naive_runs * EVENTS_PER_RUN, naive
        ),
        summarize(
            "projector", "agentstream at 5,000 events/s", "lag p50", "ms", int(5000 * duration_s), p50s
        ),
        summarize(
            "projector", "agentstream at 5,000 events/s", "lag p99", "ms", int(5000 * duration_s), p99s
        ),
    ]

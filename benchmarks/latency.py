"""``latency``: submit -> ``run.started`` at idle and under load, and emit -> SSE client at 1k clients.

- pickup: one worker process (``worker_main``, concurrency 256) idle and ready; runs submitted one
  at a time at a steady 200/s; latency from the run's ``created`` to its ``started`` (Redis clock,
  ms resolution: a 0 means under a millisecond). "Under load": the same, while a background
  submitter keeps the same worker busy with 500 more runs/s.
- SSE: the ``sse`` scenario's round at 1,000 held clients (300 with ``--quick``), 200 events/s
  appended through the store, each fanned out to its run's 10 clients; append -> frame read.

p50 / p99 / p99.9 per round; the systems (idle, load, SSE) alternate within each round.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from pathlib import Path

from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, Redis, SubmitRequest, redis_from_url
from benchmarks import sse
from benchmarks.common import Options, Record, summarize
from benchmarks.e2e import (
    CONCURRENCY,
    NoOp,
    delete_prefix,
    run_times,
    start_workers,
    wait_all_finished,
    wait_serving,
)

RATE_PER_S = 200.0
BACKGROUND_PER_S = 500.0
QUANTILES = {"p50": 0.5, "p99": 0.99, "p99.9": 0.999}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def background_load(store: EventStore, per_s: float, stop: asyncio.Event) -> int:
    """Submit ``per_s`` runs a second in ticks of 20 ms until ``stop``; returns how many."""
    submitted, began, tick_s = 0, time.monotonic(), 0.02
    while not stop.is_set():
        batch = int((time.monotonic() - began) * per_s) - submitted
        if batch > 0:
            await asyncio.gather(*(store.submit(SubmitRequest(NoOp.key, "user:load")) for _ in range(batch)))
            submitted += batch
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick_s)
    return submitted


async def pickup_round(client: Redis, redis_url: str, n: int, *, loaded: bool, log: Path) -> list[float]:
    prefix = f"blat{uuid.uuid4().hex[:8]}"
    store = EventStore(client, Settings(KEY_PREFIX=prefix), pipeline_scripts=True)
    await store.ensure_groups([NoOp.key])
    proc = start_workers(
        prefix,
        redis_url,
        1,
        burst=False,
        registry="benchmarks.e2e:register",
        concurrency=CONCURRENCY,
        log=log,
    )
    stop = asyncio.Event()
    load: asyncio.Task[int] | None = None
    try:
        await wait_serving(client, store, 1)
        if loaded:
            load = asyncio.create_task(background_load(store, BACKGROUND_PER_S, stop))
        run_ids: list[str] = []
        started = time.monotonic()
        for i in range(n):  # a steady pace: submit i at started + i / rate
            delay = started + i / RATE_PER_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            run_ids.append((await store.submit(SubmitRequest(NoOp.key, "user:bench"))).run_id)
        stop.set()
        if load is not None:
            await load
        await wait_all_finished(client, store, run_ids, 120)
        return [float(s - c) for c, s, _ in await run_times(client, store, run_ids)]
    finally:
        stop.set()
        if load is not None and not load.done():
            load.cancel()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 60)
        await delete_prefix(client, prefix)


async def main(opts: Options) -> list[Record]:
    n = opts.size(2_000, 100)
    clients = 100 if opts.quick else 1_000
    sse.raise_fd_limit()
    client = redis_from_url(opts.redis_url)
    log = Path(tempfile.gettempdir()) / "agentstream-bench-latency.log"
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(1 if opts.quick else opts.rounds):  # --quick: CI's smoke run
            for loaded in (False, True):
                latencies = await pickup_round(client, opts.redis_url, n, loaded=loaded, log=log)
                system = (
                    f"submit->started, load +{BACKGROUND_PER_S:g} runs/s"
                    if loaded
                    else "submit->started, idle"
                )
                for name, q in QUANTILES.items():
                    samples.setdefault((system, name), []).append(quantile(latencies, q))
                print(f"  latency {system}: p99 {quantile(latencies, 0.99):.0f} ms", flush=True)
            got = await sse.one_round(opts, clients, latency_events=n)
            system = f"emit->SSE client @{clients} clients"
            for name, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms")):
                samples.setdefault((system, name), []).append(got[key])
            print(f"  latency {system}: p99 {got['p99_ms']:.1f} ms", flush=True)
    finally:
        await client.aclose()
    return [
        summarize("latency", f"agentstream {system}", name, "ms", n, values)
        for (system, name), values in samples.items()
    ]

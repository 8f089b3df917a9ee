"""Memory: the RSS of ONE worker process holding 1,000 concurrently running (sleeping) runs.

Goal: under 150 MB. Reported next to the same worker's idle RSS, so the per-run cost shows.
The runs are submitted first; the worker (``worker_main``, concurrency 1,000) starts them all;
RSS is read from ``/proc/<pid>/status`` once every run has started.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
import uuid
from pathlib import Path

from agentstream.consumers import AgentRuntime, RunContext, RunResult
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, Redis, redis_from_url
from benchmarks.common import Options, Record, summarize
from benchmarks.e2e import delete_prefix, start_workers, submit_all


class Sleep(AgentRuntime):
    key = "bench-sleep"

    async def run(self, ctx: RunContext) -> RunResult:
        await ctx.emit_user_message("sleeping")
        await asyncio.sleep(float(ctx.params.get("sleep_s", 120)))
        return RunResult()


def register() -> list[AgentRuntime]:
    return [Sleep()]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def count_running(client: Redis, store: EventStore, run_ids: list[str]) -> int:
    async with client.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.hget(store.keys.run_state(run_id), "status")
        return sum(1 for s in await pipe.execute() if s == b"running")


async def one_round(client: Redis, redis_url: str, n: int, log: Path) -> tuple[float, float]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    store = EventStore(client, Settings(KEY_PREFIX=prefix), pipeline_scripts=True)
    await store.ensure_groups([Sleep.key])
    proc = start_workers(
        prefix,
        redis_url,
        1,
        burst=False,
        registry="benchmarks.worker_memory:register",
        concurrency=n,
        log=log,
    )
    try:
        deadline = time.monotonic() + 60
        warm_up = await submit_all(store, 1, Sleep.key, {"sleep_s": 0})
        while await client.hget(store.keys.run_state(warm_up[0]), "status") != b"succeeded":
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the worker did not start; see {log}")
            await asyncio.sleep(0.1)
        idle = rss_mb(proc.pid)
        run_ids = await submit_all(store, n, Sleep.key, {"sleep_s": 120})
        while await count_running(client, store, run_ids) < n:
            if time.monotonic() > deadline + 60:
                raise RuntimeError("not every run started")
            await asyncio.sleep(0.2)
        return idle, rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)  # no drain: the runs are thrown away with the prefix
        await asyncio.to_thread(proc.wait, 30)
        await delete_prefix(client, prefix)


async def main(opts: Options) -> list[Record]:
    n = opts.size(1_000, 200)
    client = redis_from_url(opts.redis_url)
    log = Path(tempfile.gettempdir()) / "agentstream-bench-worker-memory.log"
    idle: list[float] = []
    loaded: list[float] = []
    try:
        for _ in range(opts.rounds):
            before, during = await one_round(client, opts.redis_url, n, log)
            idle.append(before)
            loaded.append(during)
            print(f"  worker RSS idle {before:.1f} MB, with {n} running runs {during:.1f} MB", flush=True)
    finally:
        await client.aclose()
    system = "agentstream (1 worker process)"
    return [
        summarize("worker-memory", system, "RSS idle", "MB", 0, idle),
        summarize("worker-memory", system, f"RSS with {n} running runs", "MB", n, loaded),
        summarize(
            "worker-memory",
            system,
            "RSS per running run",
            "KB",
            n,
            [(b - a) * 1024 / n for a, b in zip(idle, loaded, strict=True)],
        ),
    ]

"""End to end: no-op runs through real worker processes (``worker_main``), 1 and 2 processes.

Each run: ``run.queued`` (submit), then the worker's ``run.started``, one ``assistant.message``
and ``run.succeeded``. Side by side with the same no-op job on arq, Dramatiq, Celery, RQ and
taskiq (``benchmarks/peers.py``), same N, processes and concurrency, systems alternating (the
order rotates each round). Throughput: N jobs queued before the workers start; runs/s from the
first job started (ours) / done (peers) to the last done, so process start-up is excluded; the
ratio ours / fastest peer is taken within each round. The pickup latency lives in ``latency``
(``latency_round`` below is its machinery). Full: N 10,000, 3 rounds, 32 jobs in flight per process
(ours ``--concurrency 32``, arq ``max_jobs``, Dramatiq ``--threads``, Celery ``--pool threads -c``,
taskiq ``--max-async-tasks``; RQ's ``SimpleWorker`` runs one at a time), each peer in its own Redis
db (11-15), flushed before and after; everyone logs at WARNING. Our worker CPU per run: the worker
processes' user + system time less that of idle burst workers started just before (start-up and
exit, a few thousand runs' worth). Beside each throughput: the Redis
server's CPU per job, and (a Redis on this machine) how long per job it was runnable but waiting
for a core (``/proc/<pid>/schedstat``): every worker waits on Redis, so on two cores shared with
the workers that wait is throughput lost by all of them.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from agentstream.consumers import AgentRuntime, RunContext, RunResult
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, Redis, SubmitRequest, redis_from_url
from benchmarks import peers
from benchmarks.common import Options, Record, RedisClock, cpu_times, not_run, steal_percent, summarize
from benchmarks.peers import PEERS

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 256
# Side by side with the peers everyone gets the same in-flight jobs per process (thread pools of
# 256 exhaust the peers' Redis connection pools; RQ runs one at a time whatever we set).
PEER_CONCURRENCY = 32


class NoOp(AgentRuntime):
    key = "bench-noop"

    async def run(self, ctx: RunContext) -> RunResult:
        await ctx.emit_user_message("ok")
        return RunResult()


def register() -> list[AgentRuntime]:
    return [NoOp()]


def start_workers(
    prefix: str, redis_url: str, processes: int, *, burst: bool, registry: str, concurrency: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env.update(
        REDIS_URL=redis_url,
        AGENTSTREAM_KEY_PREFIX=prefix,
        AGENTSTREAM_RUNTIME_REGISTRY=registry,
        AGENTSTREAM_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    command = [
        sys.executable,
        "-m",
        "agentstream.consumers.worker_main",
        "--processes",
        str(processes),
        "--concurrency",
        str(concurrency),
        "--queue-poll-interval",
        "0.5",
    ]
    if burst:
        command.append("--burst")
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


async def submit_all(
    store: EventStore, n: int, agent_key: str, params: dict[str, object] | None = None
) -> list[str]:
    run_ids: list[str] = []
    for start in range(0, n, 2000):  # one tick's worth of submits shares a pipeline
        chunk = [
            SubmitRequest(agent_key, "user:bench", params=params or {}) for _ in range(min(2000, n - start))
        ]
        run_ids += [r.run_id for r in await asyncio.gather(*(store.submit(req) for req in chunk))]
    return run_ids


async def run_times(client: Redis, store: EventStore, run_ids: list[str]) -> list[tuple[int, int, int]]:
    """(created, started, finished) ms of every run, in one pipeline per 5,000."""
    out: list[tuple[int, int, int]] = []
    for start in range(0, len(run_ids), 5000):
        async with client.pipeline(transaction=False) as pipe:
            for run_id in run_ids[start : start + 5000]:
                pipe.hmget(store.keys.run_state(run_id), "created", "started", "finished")
            for created, started, finished in await pipe.execute():
                out.append((int(created or 0), int(started or 0), int(finished or 0)))
    return out


async def wait_all_finished(client: Redis, store: EventStore, run_ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        times = await run_times(client, store, run_ids)
        if all(f for _, _, f in times):
            return
        if time.monotonic() > deadline:
            done = sum(1 for _, _, f in times if f)
            raise RuntimeError(f"only {done}/{len(run_ids)} runs finished within {timeout_s}s")
        await asyncio.sleep(0.2)


async def wait_serving(client: Redis, store: EventStore, processes: int, timeout_s: float = 60) -> None:
    """Warm-up runs until every worker process has started one: then all are reading."""
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < processes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {processes} worker processes started runs")
        run_ids = await submit_all(store, 20, NoOp.key)
        await wait_all_finished(client, store, run_ids, timeout_s)
        async with client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hget(store.keys.run_state(run_id), "worker")
            seen.update(w for w in await pipe.execute() if w)


async def delete_prefix(client: Redis, prefix: str) -> None:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.delete(*batch)
            batch.clear()
    if batch:
        await client.delete(*batch)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Round(NamedTuple):
    runs_per_s: float
    worker_cpu_us: float | None  # per run: user + system of the workers less their start-up and exit
    # (None where the runs cost less than start-up varies: a --quick N)
    redis_cpu_us: float  # per run: the Redis server's, from the workers' start to their exit
    redis_waiting_us: float | None  # per run: how long Redis was runnable but waiting for a core


def start_noop_burst(
    prefix: str, redis_url: str, processes: int, concurrency: int, log: Path
) -> subprocess.Popen[bytes]:
    """Burst workers of the no-op agent: they drain ``prefix``'s queues, then exit."""
    return start_workers(
        prefix,
        redis_url,
        processes,
        burst=True,
        registry="benchmarks.e2e:register",
        concurrency=concurrency,
        log=log,
    )


async def idle_burst_cpu_s(redis_url: str, processes: int, log: Path, concurrency: int) -> float:
    """CPU of burst workers that find no job: their start-up (Python, Django, the agents) and exit.

    One process's start-up costs as much CPU as a few thousand no-op runs: a round's CPU less
    this is what its runs cost.
    """
    before = children_cpu_s()
    proc = start_noop_burst(f"bench{uuid.uuid4().hex[:8]}", redis_url, processes, concurrency, log)
    if await asyncio.to_thread(proc.wait, 120) != 0:
        raise RuntimeError(f"idle burst workers exited with {proc.returncode}; see {log}")
    return children_cpu_s() - before


async def throughput_round(
    client: Redis, redis_url: str, n: int, processes: int, log: Path, concurrency: int = CONCURRENCY
) -> Round:
    """N queued no-op runs drained by ``processes`` burst workers."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    store = EventStore(client, Settings(KEY_PREFIX=prefix), pipeline_scripts=True)
    try:
        idle_cpu_s = await idle_burst_cpu_s(redis_url, processes, log, concurrency)
        run_ids = await submit_all(store, n, NoOp.key)
        cpu_before = children_cpu_s()
        redis_before = RedisClock.read(await client.info())
        proc = start_noop_burst(prefix, redis_url, processes, concurrency, log)
        await asyncio.to_thread(proc.wait, 600)
        redis_after = RedisClock.read(await client.info())
        runs_cpu_s = children_cpu_s() - cpu_before - idle_cpu_s
        cpu_us_per_run = runs_cpu_s / n * 1e6 if runs_cpu_s > 0 else None
        times = await run_times(client, store, run_ids)
        if not all(f for _, _, f in times):
            raise RuntimeError(
                f"burst workers exited with {proc.returncode} before every run finished; see {log}"
            )
        first_start = min(s for _, s, _ in times)
        last_finish = max(f for _, _, f in times)
        return Round(
            n / ((last_finish - first_start) / 1000),
            cpu_us_per_run,
            redis_after.cpu_us_per_run(redis_before, n),
            redis_after.waiting_us_per_run(redis_before, n),
        )
    finally:
        await delete_prefix(client, prefix)


async def latency_round(
    client: Redis, redis_url: str, n: int, processes: int, rate: float, log: Path
) -> list[int]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    store = EventStore(client, Settings(KEY_PREFIX=prefix), pipeline_scripts=True)
    await store.ensure_groups([NoOp.key])
    proc = start_workers(
        prefix,
        redis_url,
        processes,
        burst=False,
        registry="benchmarks.e2e:register",
        concurrency=CONCURRENCY,
        log=log,
    )
    try:
        await wait_serving(client, store, processes)
        run_ids: list[str] = []
        started = time.monotonic()
        for i in range(n):  # a steady pace: submit i at started + i / rate
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            run_ids.append((await store.submit(SubmitRequest(NoOp.key, "user:bench"))).run_id)
        await wait_all_finished(client, store, run_ids, 120)
        return [s - c for c, s, _ in await run_times(client, store, run_ids)]
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 60)
        await delete_prefix(client, prefix)


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def peer_records(
    system: str,
    n: int,
    samples: list[float],
    failures: list[str],
    redis_cpu_us: Sequence[float] = (),
    redis_waiting: Sequence[float] = (),
) -> list[Record]:
    if samples:
        throughput = summarize("e2e", system, "throughput", "runs/s", n, samples)
        return [throughput, *redis_cpu_records(system, n, redis_cpu_us, redis_waiting)]
    reason = failures[-1] if failures else "not run"
    return [not_run("e2e", system, "throughput", "runs/s", n, reason)]


def redis_cpu_records(
    system: str, n: int, samples: Sequence[float], waiting: Sequence[float] = ()
) -> list[Record]:
    """The Redis server's CPU per job: on a shared 2-core machine it is what the workers of every
    system compete with, so it bounds what more processes can add. And how long Redis, which
    every worker waits on, itself waited for a core (a local server only)."""
    records = [summarize("e2e", system, "Redis CPU per run", "µs", n, samples)] if samples else []
    if waiting:
        records.append(summarize("e2e", system, "Redis waiting for a core per run", "µs", n, waiting))
    return records


async def main(opts: Options) -> list[Record]:
    """Ours and every peer, same N, processes and concurrency; systems alternate, rotated per round."""
    n = opts.size(10_000, 100)  # RQ does ~230 jobs/s here: 10,000 keeps a full run near 10 minutes
    client = redis_from_url(opts.redis_url)
    log = Path(tempfile.gettempdir()) / "agentstream-bench-e2e.log"
    systems = ["agentstream", *(peer.name for peer in PEERS)]
    runs_per_s: dict[tuple[int, str], list[float]] = {}
    redis_cpu: dict[tuple[int, str], list[float]] = {}
    redis_waiting: dict[tuple[int, str], list[float]] = {}
    cpu: dict[int, list[float]] = {}
    failures: dict[tuple[int, str], list[str]] = {}
    ratios: dict[int, list[float]] = {}
    steal: dict[int, list[float]] = {}  # the hypervisor's share during our rounds
    try:
        # --quick is CI's smoke run (the harness must not rot): one round of 1 process; numbers come from full runs
        for round_no in range(1 if opts.quick else opts.rounds):
            for processes in (1,) if opts.quick else (1, 2):
                order = systems[round_no % len(systems) :] + systems[: round_no % len(systems)]
                this_round: dict[str, float] = {}
                for system in order:
                    if system == "agentstream":
                        times_before = cpu_times()
                        value, cpu_us, redis_us, waiting = await throughput_round(
                            client, opts.redis_url, n, processes, log, PEER_CONCURRENCY
                        )
                        if cpu_us is not None:
                            cpu.setdefault(processes, []).append(cpu_us)
                        stolen = steal_percent(times_before, cpu_times())
                        if stolen is not None:
                            steal.setdefault(processes, []).append(stolen)
                    else:
                        peer = next(p for p in PEERS if p.name == system)
                        try:
                            value, redis_us, waiting = await asyncio.to_thread(
                                peers.throughput_round,
                                peer,
                                opts.redis_url,
                                n,
                                processes,
                                PEER_CONCURRENCY,
                                log,
                            )
                        except peers.PeerUnavailable as e:
                            failures.setdefault((processes, system), []).append(str(e))
                            print(f"  e2e {system} {processes} proc: {e}", flush=True)
                            continue
                    this_round[system] = value
                    runs_per_s.setdefault((processes, system), []).append(value)
                    redis_cpu.setdefault((processes, system), []).append(redis_us)
                    if waiting is not None:
                        redis_waiting.setdefault((processes, system), []).append(waiting)
                    print(
                        f"  e2e {system} {processes} proc x {PEER_CONCURRENCY}: {value:,.0f} runs/s",
                        flush=True,
                    )
                fastest_peer = max((v for k, v in this_round.items() if k != "agentstream"), default=0.0)
                if fastest_peer and "agentstream" in this_round:
                    ratios.setdefault(processes, []).append(this_round["agentstream"] / fastest_peer)
    finally:
        await client.aclose()
    records: list[Record] = []
    for processes in sorted({p for p, system in runs_per_s if system == "agentstream"}):
        ours = f"agentstream ({processes} proc x {PEER_CONCURRENCY})"
        records.append(
            summarize("e2e", ours, "throughput", "runs/s", n, runs_per_s[(processes, "agentstream")])
        )
        if cpu.get(processes):
            records.append(summarize("e2e", ours, "worker CPU per run", "µs", n, cpu[processes]))
        records += redis_cpu_records(
            ours, n, redis_cpu[(processes, "agentstream")], redis_waiting.get((processes, "agentstream"), [])
        )
        if steal.get(processes):
            records.append(summarize("e2e", ours, "CPU stolen by the hypervisor", "%", n, steal[processes]))
        for peer in PEERS:
            note = f", {peer.concurrency_note}" if peer.concurrency_note else ""
            records += peer_records(
                f"{peer.name} ({processes} proc x {1 if peer.name == 'rq' else PEER_CONCURRENCY}{note})",
                n,
                runs_per_s.get((processes, peer.name), []),
                failures.get((processes, peer.name), []),
                redis_cpu.get((processes, peer.name), []),
                redis_waiting.get((processes, peer.name), []),
            )
        if ratios.get(processes):
            records.append(
                summarize(
                    "e2e", ours, "throughput / fastest peer (same round)", "ratio", n, ratios[processes]
                )
            )
    return records

"""``worker-cost``: the instructions a worker process executes per run, counted (callgrind), not timed.

The worker's side of ``redis-cost``: a drain runs under ``valgrind --tool=callgrind`` (every
user-space instruction of the Python process: interpreter, event loop, hiredis, msgpack), once
with ``SMALL`` queued no-op runs and once with ``SMALL + N``; the difference over N is the cost of
a run, start-up and exit cancelled out. The worker's timers tick by wall-clock time, which
valgrind stretches ~50x, so the counted worker sets them far apart (promote and reclaim every
hour, a lease of an hour: a heartbeat every twenty minutes); what is left is the runs. Counted
three ways, each round in turn:

* ``agentstream``: one ``Worker`` (``--concurrency 32``) draining the runs;
* ``agentstream, 2 processes``: two workers draining the same queues at once, summed: the same
  count means a second process does the same work per run (what it loses on two cores is time);
* ``redis-py client``: the commands a run needs from its worker (read the jobs; start; the
  message and the end on the run stream and the log; ack) sent plainly through redis-py,
  pipelined 16 runs at a time, no script, no runtime: what a worker written the usual way (the
  peers' clients are redis-py) spends on the same writes.

``--quick`` (CI's smoke run) counts one worker only. Needs valgrind (``apt-get install
valgrind``); without it the scenario records why it could not run.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, Redis, redis_from_url
from benchmarks.common import Options, Record, not_run, summarize
from benchmarks.e2e import NoOp, delete_prefix, submit_all
from benchmarks.redis_cost import callgrind_total

ROOT = Path(__file__).resolve().parents[1]
SMALL = 200  # runs drained by the baseline count: start-up, the first batches, exit
BATCH = 16  # runs per pipeline of the redis-py client, as the worker's claims and finish batches hold them
HOUR_S = 3600.0
SYSTEMS = ("agentstream", "agentstream, 2 processes", "redis-py client")
CLIENT = SYSTEMS[2]


def counted(argv: list[str], processes: int = 1) -> int:
    """Instructions of ``processes`` copies of ``python -m benchmarks.worker_cost ARGV``, each under
    callgrind, run at once and summed."""
    with tempfile.TemporaryDirectory(prefix="agentstream-worker-cost-") as tmp:
        procs = [
            subprocess.Popen(
                [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={tmp}/out.{i}",
                    sys.executable,
                    "-m",
                    "benchmarks.worker_cost",
                    *argv,
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i in range(processes)
        ]
        try:
            total = 0
            for i, proc in enumerate(procs):
                _, err = proc.communicate(timeout=900)
                found = callgrind_total(Path(tmp) / f"out.{i}") if proc.returncode == 0 else None
                if found is None:
                    raise RuntimeError(f"counted {argv[0]} exited {proc.returncode}: {err.decode()[-500:]}")
                total += found
            return total
        finally:
            for proc in procs:  # one failed or hung: leave no valgrind behind
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


async def per_run(client: Redis, url: str, system: str, n: int) -> float:
    """(count with SMALL + n runs - count with SMALL) / n; the two drains run at once (each
    process is counted on its own, so they do not disturb each other's count)."""
    prefixes = [f"wcost{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        for prefix, size in zip(prefixes, (SMALL, SMALL + n), strict=True):
            if system == CLIENT:
                await queue_plain_jobs(client, prefix, size)
            else:
                store = EventStore(client, Settings(KEY_PREFIX=prefix), pipeline_scripts=True)
                await submit_all(store, size, NoOp.key)
                await store.aclose()
        command = "client" if system == CLIENT else "drain"
        processes = 2 if system.endswith("2 processes") else 1
        small, large = await asyncio.gather(
            *(asyncio.to_thread(counted, [command, url, prefix], processes) for prefix in prefixes)
        )
    finally:
        for prefix in prefixes:
            await delete_prefix(client, prefix)
    return (large - small) / n


async def main(opts: Options) -> list[Record]:
    n = opts.size(2000, 100)
    if shutil.which("valgrind") is None:
        reason = "needs valgrind (apt-get install valgrind)"
        return [
            not_run("worker-cost", "agentstream", "worker instructions per run", "instructions", n, reason)
        ]
    client = redis_from_url(opts.redis_url)
    systems = SYSTEMS[:1] if opts.quick else SYSTEMS
    samples: dict[str, list[float]] = {system: [] for system in systems}
    try:
        for round_no in range(1 if opts.quick else opts.rounds):
            order = systems[round_no % len(systems) :] + systems[: round_no % len(systems)]
            for system in order:
                samples[system].append(await per_run(client, opts.redis_url, system, n))
                print(f"  worker-cost {system}: {samples[system][-1]:,.0f} instructions per run", flush=True)
    finally:
        await client.aclose()
    records = [
        summarize("worker-cost", system, "worker instructions per run", "instructions", n, values)
        for system, values in samples.items()
    ]
    if CLIENT in samples:
        ratios = [a / b for a, b in zip(samples["agentstream"], samples[CLIENT], strict=True)]
        records.append(
            summarize("worker-cost", "agentstream", f"per run / {CLIENT} (same round)", "ratio", n, ratios)
        )
    return records


# -- the counted processes -------------------------------------------------------------------


def drain(url: str, prefix: str) -> None:
    """One burst worker over the prefix's queued no-op runs, its timers an hour apart."""
    import uvloop

    from agentstream.consumers.registry import RuntimeRegistry
    from agentstream.consumers.worker import Worker
    from agentstream.core.gctune import freeze_startup_heap

    async def serve() -> None:
        client = redis_from_url(url)
        store = EventStore(
            client, Settings(KEY_PREFIX=prefix, LEASE_TTL_SECONDS=HOUR_S), pipeline_scripts=True
        )
        registry = RuntimeRegistry()
        registry.register(NoOp())
        worker = Worker(
            store,
            registry,
            concurrency=32,
            burst=True,
            handle_signals=False,
            promote_interval_s=HOUR_S,
            reclaim_interval_s=HOUR_S,
        )
        try:
            await worker.run()
        finally:
            await store.aclose()
            await client.aclose()

    freeze_startup_heap()  # as worker_main does
    uvloop.run(serve())


def client_queue(prefix: str) -> str:
    return f"{prefix}:client:q"


async def queue_plain_jobs(client: Redis, prefix: str, n: int) -> None:
    """n job entries (a run id each) and a consumer group, for ``client`` to read."""
    queue = client_queue(prefix)
    await client.xgroup_create(queue, "workers", id="0", mkstream=True)
    async with client.pipeline(transaction=False) as pipe:
        for _ in range(n):
            pipe.xadd(queue, {"r": str(uuid.uuid4())})
        await pipe.execute()


def plain_client(url: str, prefix: str) -> None:
    """The commands a run needs from its worker, sent plainly: read 16 jobs, then per run the
    state and run.started (stream and log), the message and run.succeeded (stream and log),
    the final state, a counter, the ack and the entry's removal, two expiries; 16 runs a pipeline."""
    import uvloop

    async def work() -> None:
        client = redis_from_url(url)
        queue, log, stats = client_queue(prefix), f"{prefix}:client:log", f"{prefix}:client:stats"
        payload = b"\x81\xa7content\xa2ok"

        def event(seq: int, kind: str) -> dict[str, Any]:
            return {"s": seq, "t": kind, "p": payload, "ts": 1, "a": 1, "vis": "user", "c": ""}

        try:
            while reply := await client.xreadgroup("workers", "w1", {queue: ">"}, count=BATCH):
                jobs = [
                    (entry_id, fields[b"r"].decode()) for _, entries in reply for entry_id, fields in entries
                ]
                async with client.pipeline(transaction=False) as pipe:
                    for _, run_id in jobs:
                        state, stream = f"{prefix}:run:{run_id}:s", f"{prefix}:run:{run_id}"
                        pipe.hset(state, mapping={"status": "running", "attempt": 1, "seq": 2, "started": 1})
                        pipe.xadd(stream, event(2, "run.started"), id="0-2")
                        pipe.xadd(log, {"r": run_id, **event(2, "run.started")})
                    await pipe.execute()
                async with client.pipeline(transaction=False) as pipe:
                    for entry_id, run_id in jobs:
                        state, stream = f"{prefix}:run:{run_id}:s", f"{prefix}:run:{run_id}"
                        for seq, kind in ((3, "assistant.message"), (4, "run.succeeded")):
                            pipe.xadd(stream, event(seq, kind), id=f"0-{seq}")
                            pipe.xadd(log, {"r": run_id, **event(seq, kind)})
                        pipe.hset(state, mapping={"seq": 4, "status": "succeeded", "finished": 1})
                        pipe.hincrby(stats, "finished:succeeded", 1)
                        pipe.xack(queue, "workers", entry_id)
                        pipe.xdel(queue, entry_id)
                        pipe.expire(state, 86400)
                        pipe.expire(stream, 86400)
                    await pipe.execute()
        finally:
            await client.aclose()

    uvloop.run(work())


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    {"drain": drain, "client": plain_client}[command](*rest)

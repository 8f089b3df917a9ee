"""``worker-cost``: the instructions a worker process executes per no-op run, counted (callgrind).

The worker side of ``redis-cost``: ``e2e``'s worker CPU per run moves by ±15% between identical
drains on a shared VM, an instruction count by well under 1%. Real worker processes
(``worker_main --burst``, ``--concurrency 32``) drain N queued runs of a plain ``redis-server``
under ``valgrind --tool=callgrind --trace-children=yes``; the count per run is the difference
between a drain of N and one of N/6 over the runs between them, so start-up (imports, the
forkserver) cancels out. One process next to two: if two executed more instructions per run
(smaller batches, more event-loop turns), the code could win the second process back; if they
execute the same, what two processes lose on two cores is the hardware's (caches, switches
between three busy processes). Needs valgrind, like ``redis-cost``.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

from agentstream.core.settings import Settings
from agentstream.core.store import EventStore
from benchmarks.common import Options, Record, summarize
from benchmarks.e2e import NoOp, start_workers, submit_all
from benchmarks.redis_cost import callgrind_tools, callgrind_total, connect, free_port, not_run

PREFIX = "wcost"


async def drain_instructions(valgrind: str, url: str, n: int, processes: int, out: Path) -> int:
    """Instructions every worker process executed (start-up included) draining ``n`` runs."""
    client = await connect(url)
    try:
        await client.flushall()
        store = EventStore(client, Settings(KEY_PREFIX=PREFIX), pipeline_scripts=True)
        await submit_all(store, n, NoOp.key)
        await store.aclose()
    finally:
        await client.aclose()
    _clear(out)
    proc = start_workers(
        PREFIX,
        url,
        processes,
        burst=True,
        registry="benchmarks.e2e:register",
        concurrency=32,
        log=out / "workers.log",
        wrapper=(valgrind, "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}/out.%p"),
    )
    if await asyncio.to_thread(proc.wait, 600) != 0:
        raise RuntimeError(f"the workers under valgrind exited with {proc.returncode}; see {out}/workers.log")
    # forked children count from their parent's counters: the difference of two drains removes it
    return _counted(out)


def _clear(out: Path) -> None:
    for old in out.glob("out.*"):
        old.unlink()


def _counted(out: Path) -> int:
    return sum(callgrind_total(path) or 0 for path in out.glob("out.*"))


def start_redis(redis_server: str) -> tuple[subprocess.Popen[bytes], str]:
    """A plain redis-server of its own on a free port (the workers' counts only are wanted)."""
    port = free_port()
    server = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    return server, f"redis://127.0.0.1:{port}/0"


async def main(opts: Options) -> list[Record]:
    n = opts.size(1200, 120)
    tools = callgrind_tools()
    if tools is None:
        return not_run("worker-cost", "worker instructions per run", n)
    valgrind, redis_server = tools
    server, url = start_redis(redis_server)
    out = Path(tempfile.mkdtemp(prefix="agentstream-worker-cost-"))
    # --quick (CI's smoke run): one process only; two need a long drain, or the one that ends
    # first idles in its blocking reads while the other works, and the counts do not cancel
    per_run: dict[int, list[float]] = {1: []} if opts.quick else {1: [], 2: []}
    small = max(1, n // 6)
    try:
        for _ in range(1 if opts.quick else opts.rounds):
            for processes in per_run:  # alternating 1 and 2 processes
                base = await drain_instructions(valgrind, url, small, processes, out)
                full = await drain_instructions(valgrind, url, n, processes, out)
                per_run[processes].append((full - base) / (n - small))
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(out, ignore_errors=True)
    records = [
        summarize(
            "worker-cost", f"agentstream ({p} proc x 32)", "worker instructions per run", "instructions", n, v
        )
        for p, v in per_run.items()
    ]
    if 2 in per_run:
        ratios = [two / one for one, two in zip(per_run[1], per_run[2], strict=True)]
        records.append(
            summarize("worker-cost", "agentstream", "2 processes / 1 (same round)", "ratio", n, ratios)
        )
    return records

"""``redis-cost``: the instructions Redis executes per run, counted exactly (callgrind), not timed.

On a shared VM two identical drains differ by ±15% in time, so a change worth 5% of Redis's CPU
cannot be seen in ``e2e``; an instruction count moves by under 0.5% between identical rounds.
A private ``redis-server`` runs under ``valgrind --tool=callgrind`` (user-space instructions of
the server, whatever it runs: command parsing, Lua, the commands, replies) and each phase of a
run is counted on its own, as the worker makes it: ``submit`` (one tick's submits batched),
``claim`` (``claim_jobs`` for 16 jobs, two in flight) and ``finish`` (16 per batch, each with the
run's one ``assistant.message``). The comparison is the floor under the same events: the same
writes sent as plain pipelined commands, 16 runs per pipeline, no script, no read, no check
(no fencing, no idempotency, no conversation policy). Needs valgrind (``apt-get install
valgrind``); without it the scenario records why it could not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agentstream.core.events import EventType
from agentstream.core.settings import Settings
from agentstream.core.store import ClaimedJob, EventStore, NewEvent, Redis, redis_from_url
from benchmarks.common import Options, Record, free_port, not_run, summarize
from benchmarks.e2e import NoOp, submit_all

BATCH = 16  # runs per claim and per finish batch, as a worker with --concurrency 32 makes them
PHASES = ("submit", "claim", "finish")
MESSAGE = {"role": "assistant", "content": "ok"}
SUCCEEDED = {"output": {}, "final_messages": [MESSAGE], "usage": {}, "artifacts": {}}


class CountedRedis:
    """A redis-server under callgrind on a free port; ``count()`` = instructions since the last."""

    def __init__(self, valgrind: str, redis_server: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agentstream-redis-cost-"))
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={self.dir}/out.%p",
                redis_server,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def count(self) -> int:
        """Dump the counters (callgrind_control) and read the dump's total."""
        before = set(glob.glob(f"{self.dir}/out.*"))
        subprocess.run(
            ["callgrind_control", "--dump", str(self.proc.pid)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for path in set(glob.glob(f"{self.dir}/out.*")) - before:
                total = callgrind_total(Path(path))
                if total is not None:
                    return total
            time.sleep(0.05)
        raise RuntimeError(f"callgrind wrote no dump in {self.dir} within 30s")

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


def callgrind_total(path: Path) -> int | None:
    """The instructions a callgrind output file counts (None: not written out yet)."""
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return None


def callgrind_tools() -> tuple[str, str] | None:
    """(valgrind, redis-server) when both are installed, with callgrind_control."""
    valgrind, redis_server = shutil.which("valgrind"), shutil.which("redis-server")
    if not valgrind or not redis_server or not shutil.which("callgrind_control"):
        return None
    return valgrind, redis_server


async def connect(url: str, timeout_s: float = 60) -> Redis:
    client = redis_from_url(url)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.ping()
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def phases(server: CountedRedis, steps: list[Callable[[], Awaitable[Any]]], n: int) -> list[float]:
    """Instructions per run of each step, counted on its own (each step awaits all its replies,
    so nothing of one step is counted in the next)."""
    per_run: list[float] = []
    server.count()
    for step in steps:
        await step()
        per_run.append(server.count() / n)
    return per_run


async def ours(client: Redis, server: CountedRedis, n: int) -> list[float]:
    await client.flushall()
    store = EventStore(client, Settings(KEY_PREFIX="cost"), pipeline_scripts=True)
    await store.ensure_groups([NoOp.key])
    queues = [(p, NoOp.key) for p in range(store.settings.PARTITIONS)]
    claimed: list[ClaimedJob] = []

    async def submit() -> None:
        await submit_all(store, n, NoOp.key)

    async def claim() -> None:
        while len(claimed) < n:
            k = len(claimed) // BATCH
            got = await asyncio.gather(
                *(
                    store.claim_jobs(queues[j % len(queues) :] + queues[: j % len(queues)], "w1", BATCH)
                    for j in (k, k + 1)
                )
            )
            claimed.extend(job for jobs in got for job in jobs)

    async def finish() -> None:
        for i in range(0, n, BATCH):
            await asyncio.gather(
                *(
                    store.finish(
                        job.run_id,
                        job.begun.attempt,  # type: ignore[union-attr]
                        EventType.RUN_SUCCEEDED,
                        SUCCEEDED,
                        events=[NewEvent(EventType.ASSISTANT_MESSAGE, MESSAGE, None)],
                        first_index=1,
                    )
                    for job in claimed[i : i + BATCH]
                )
            )

    try:
        return await phases(server, [submit, claim, finish], n)
    finally:
        await store.aclose()


async def plain_writes(client: Redis, server: CountedRedis, n: int) -> list[float]:
    """The same keys, entries and fields as our scripts write, as plain pipelined commands."""
    await client.flushall()
    store = EventStore(client, Settings(KEY_PREFIX="cost"))
    run_ids = [str(uuid.uuid4()) for _ in range(n)]
    # one small payload for every event and the job's input (ours carry 20-160 bytes): the
    # floor errs low by a few bytes copied per entry, against ~20k instructions per command
    payload = store._encode(EventType.RUN_QUEUED, {"input": {}})
    groups = {store.keys.queue(p, NoOp.key) for p in range(store.settings.PARTITIONS)}
    for queue in groups:
        await client.xgroup_create(queue, "workers", id="0", mkstream=True)

    def event(seq: int, kind: str, body: bytes, attempt: int) -> dict[str, Any]:
        return {"s": seq, "t": kind, "p": body, "ts": 1, "a": attempt, "vis": "user", "c": ""}

    async def each(write: Callable[[Any, str], None]) -> None:
        for i in range(0, n, BATCH):
            async with client.pipeline(transaction=False) as pipe:
                for run_id in run_ids[i : i + BATCH]:
                    write(pipe, run_id)
                await pipe.execute()

    def submit(pipe: Any, run_id: str) -> None:
        tag, (state, stream) = store.keys.run_keys(run_id)
        pipe.hset(
            state,
            mapping={
                "status": "queued",
                "seq": 1,
                "attempt": 0,
                "agent": NoOp.key,
                "owner": "user:bench",
                "conv": "",
                "max_attempts": 3,
                "due": 0,
                "timeout_ms": 900000,
                "cancel": 0,
                "created": 1,
                "job": "1-0",
            },
        )
        pipe.xadd(stream, event(1, "run.queued", payload, 0), id="0-1")
        pipe.xadd(tag + "log", {"r": run_id, **event(1, "run.queued", payload, 0)})
        pipe.xadd(tag + "q:" + NoOp.key, {"r": run_id, "p": payload})

    def claim(pipe: Any, run_id: str) -> None:
        tag, (state, stream) = store.keys.run_keys(run_id)
        pipe.hset(
            state,
            mapping={"status": "running", "attempt": 1, "worker": "w1", "seq": 2, "emitted": 0, "started": 1},
        )
        pipe.xadd(stream, event(2, "run.started", payload, 1), id="0-2")
        pipe.xadd(tag + "log", {"r": run_id, **event(2, "run.started", payload, 1)})

    jobs: dict[str, str] = {}  # run id -> its job entry's id, as the reads return them

    async def claim_all() -> None:
        for queue in groups:  # the reads: what XREADGROUP costs, BATCH entries a call
            while reply := await client.xreadgroup("workers", "w1", {queue: ">"}, count=BATCH):
                for _, entries in reply:
                    jobs.update((fields[b"r"].decode(), entry_id.decode()) for entry_id, fields in entries)
        await each(claim)

    def finish(pipe: Any, run_id: str) -> None:
        tag, (state, stream) = store.keys.run_keys(run_id)
        for seq, kind in ((3, "assistant.message"), (4, "run.succeeded")):
            pipe.xadd(stream, event(seq, kind, payload, 1), id=f"0-{seq}")
            pipe.xadd(tag + "log", {"r": run_id, **event(seq, kind, payload, 1)})
        pipe.hset(state, mapping={"seq": 4, "status": "succeeded", "finished": 1, "job": ""})
        pipe.hincrby(tag + "stats", "finished:succeeded", 1)
        pipe.xack(tag + "q:" + NoOp.key, "workers", jobs[run_id])
        pipe.xdel(tag + "q:" + NoOp.key, jobs[run_id])
        pipe.expire(state, 86400)
        pipe.expire(stream, 86400)

    return await phases(server, [lambda: each(submit), claim_all, lambda: each(finish)], n)


async def main(opts: Options) -> list[Record]:
    n = opts.size(960, 160)
    tools = callgrind_tools()
    if tools is None:
        reason = "needs valgrind (apt-get install valgrind) and redis-server on PATH"
        return [not_run("redis-cost", "agentstream", "Redis instructions per run", "instructions", n, reason)]
    server = CountedRedis(*tools)
    samples: dict[str, list[list[float]]] = {"agentstream": [], "plain writes": []}
    try:
        client = await connect(server.url)
        try:
            for measure in (ours, plain_writes):  # uncounted: loads the scripts, warms the server
                await measure(client, server, 2 * BATCH)
            for round_no in range(1 if opts.quick else opts.rounds):
                order = list(samples) if round_no % 2 == 0 else list(reversed(samples))
                for system in order:
                    measure = ours if system == "agentstream" else plain_writes
                    samples[system].append(await measure(client, server, n))
        finally:
            await client.aclose()
    finally:
        server.stop()
    records: list[Record] = []
    for system, rounds in samples.items():
        label = system if system == "agentstream" else "plain writes (same events, pipelined, no script)"
        for i, phase in enumerate(PHASES):
            records.append(
                summarize("redis-cost", label, f"{phase} per run", "instructions", n, [r[i] for r in rounds])
            )
        records.append(
            summarize("redis-cost", label, "whole run", "instructions", n, [sum(r) for r in rounds])
        )
    records.append(
        summarize(
            "redis-cost",
            "agentstream",
            "whole run / plain writes (same round)",
            "ratio",
            n,
            [sum(a) / sum(b) for a, b in zip(samples["agentstream"], samples["plain writes"], strict=True)],
        )
    )
    return records

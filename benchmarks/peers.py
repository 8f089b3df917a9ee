"""The peers' side of ``e2e``: the same no-op job on arq, Dramatiq, Celery, RQ and taskiq.

One round of one peer: FLUSHDB its own Redis db index, queue N jobs, start P real worker
processes, wait until the done file (``peer_tasks``) holds N stamps, stop the workers, FLUSHDB
again. Throughput is N over the time from the first job done to the last (start-up excluded,
as for ours). A peer that is not installed or fails is a ``PeerUnavailable`` with the reason.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from benchmarks.common import RedisClock
from benchmarks.peer_tasks import DONE_LINE_BYTES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class PeerUnavailable(Exception):
    """The peer cannot be installed or run here; the message says why."""


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    library: str  # the import that proves it is installed
    db: int  # its own Redis db index, flushed before and after
    enqueue: Callable[[int], None]  # runs in a child process with BENCH_REDIS_URL set
    commands: Callable[
        [str, int, int], list[list[str]]
    ]  # (url, processes, concurrency) -> one command per process
    concurrency_note: str = ""


def enqueue_arq(n: int) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    async def go() -> None:
        pool = await create_pool(RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"]))
        try:
            for start in range(0, n, 100):  # under the pool's connection limit
                await asyncio.gather(*(pool.enqueue_job("noop") for _ in range(min(100, n - start))))
        finally:
            await pool.aclose()

    asyncio.run(go())


def enqueue_dramatiq(n: int) -> None:
    from benchmarks.peer_tasks.dramatiq_noop import noop

    for _ in range(n):
        noop.send()


def enqueue_celery(n: int) -> None:
    from benchmarks.peer_tasks.celery_noop import app, noop

    with app.producer_or_acquire() as producer:
        for _ in range(n):
            noop.apply_async(producer=producer)


def enqueue_rq(n: int) -> None:
    from rq import Queue

    from benchmarks.peer_tasks.rq_noop import noop

    queue = Queue("bench", connection=redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]))
    for start in range(0, n, 1000):
        queue.enqueue_many([Queue.prepare_data(noop, result_ttl=0) for _ in range(min(1000, n - start))])


def enqueue_taskiq(n: int) -> None:
    from benchmarks.peer_tasks.taskiq_noop import broker, noop

    async def go() -> None:
        await broker.startup()
        try:
            for start in range(0, n, 1000):
                await asyncio.gather(*(noop.kiq() for _ in range(min(1000, n - start))))
        finally:
            await broker.shutdown()

    asyncio.run(go())


PEERS = [
    Peer(
        "arq",
        "arq",
        11,
        enqueue_arq,
        lambda u, p, c: [[sys.executable, "-m", "benchmarks.peer_tasks.arq_noop"]] * p,
    ),
    Peer(
        "dramatiq",
        "dramatiq",
        12,
        enqueue_dramatiq,
        lambda u, p, c: [
            [
                str(BIN / "dramatiq"),
                "benchmarks.peer_tasks.dramatiq_noop",
                "--processes",
                str(p),
                "--threads",
                str(c),
                "--queues",
                "bench",
            ]
        ],
        "threads",
    ),
    Peer(
        "celery",
        "celery",
        13,
        enqueue_celery,
        lambda u, p, c: [
            [
                str(BIN / "celery"),
                "-A",
                "benchmarks.peer_tasks.celery_noop",
                "worker",
                "--pool",
                "threads",
                "-c",
                str(c),
                "-n",
                f"w{i}@bench",
                "-Q",
                "bench",
                "-l",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
            for i in range(p)
        ],
        "threads",
    ),
    Peer(
        "rq",
        "rq",
        14,
        enqueue_rq,
        lambda u, p, c: (
            [
                [
                    str(BIN / "rq"),
                    "worker",
                    "--burst",
                    "-w",
                    "rq.worker.SimpleWorker",
                    "--url",
                    u,
                    "--logging_level",
                    "WARNING",
                    "bench",
                ]
            ]
            * p
        ),
        "1 job at a time per process: RQ has no in-process concurrency",
    ),
    Peer(
        "taskiq",
        "taskiq_redis",
        15,
        enqueue_taskiq,
        lambda u, p, c: [
            [
                str(BIN / "taskiq"),
                "worker",
                "benchmarks.peer_tasks.taskiq_noop:broker",
                "--workers",
                str(p),
                "--max-async-tasks",
                str(c),
                "--no-configure-logging",
            ]
        ],
    ),
]


def db_url(redis_url: str, db: int) -> str:
    parts = urlsplit(redis_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def available(peer: Peer) -> None:
    try:
        found = importlib.util.find_spec(peer.library) is not None
    except ImportError:
        found = False
    if not found:
        raise PeerUnavailable(f"{peer.name} is not installed: pip install -e '.[bench]'")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:  # a worker that ignores SIGTERM is not ours to wait on
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def done_stamps(path: Path) -> list[int]:
    data = path.read_bytes()
    return [int(data[i : i + DONE_LINE_BYTES - 1]) for i in range(0, len(data), DONE_LINE_BYTES)]


def throughput_round(
    peer: Peer, redis_url: str, n: int, processes: int, concurrency: int, log: Path
) -> tuple[float, float, float | None]:
    """(runs/s, Redis CPU µs per job and µs per job it waited for a core, from the workers' start
    to the last job done) of one round; raises PeerUnavailable with the reason when the peer
    cannot run."""
    available(peer)
    url = db_url(redis_url, peer.db)
    admin = redis.Redis.from_url(url)
    done = Path(tempfile.mkstemp(prefix=f"bench-{peer.name}-", suffix=".done")[1])
    env = {
        **os.environ,
        "BENCH_REDIS_URL": url,
        "BENCH_DONE_FILE": str(done),
        "BENCH_CONCURRENCY": str(concurrency),
        "PYTHONPATH": str(ROOT),
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        admin.flushdb()
        # queued from a child process: the peer's module-level broker binds to its env and loop
        queued = subprocess.run(
            [sys.executable, "-m", "benchmarks.peers", peer.name, str(n)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if queued.returncode:
            last = (queued.stderr.strip().splitlines() or ["no output"])[-1]
            raise PeerUnavailable(f"{peer.name}: queueing failed: {last}")
        redis_before = RedisClock.read(admin.info())
        with log.open("ab") as out:
            for command in peer.commands(url, processes, concurrency):
                procs.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        cwd=ROOT,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + max(60.0, n / 100)
        while done.stat().st_size < n * DONE_LINE_BYTES:
            if time.monotonic() > deadline or all(p.poll() is not None for p in procs):
                got = done.stat().st_size // DONE_LINE_BYTES
                raise PeerUnavailable(f"{peer.name}: only {got}/{n} jobs done; see {log}")
            time.sleep(0.05)  # a poll of the done file, with a deadline as the backstop
        redis_after = RedisClock.read(admin.info())
        stamps = done_stamps(done)
        return (
            n / ((max(stamps) - min(stamps)) / 1e9),
            redis_after.cpu_us_per_run(redis_before, n),
            redis_after.waiting_us_per_run(redis_before, n),
        )
    finally:
        stop(procs)
        admin.flushdb()
        admin.close()
        done.unlink(missing_ok=True)


if __name__ == "__main__":  # python -m benchmarks.peers PEER N: queue N no-op jobs (BENCH_REDIS_URL)
    by_name = {peer.name: peer for peer in PEERS}
    by_name[sys.argv[1]].enqueue(int(sys.argv[2]))

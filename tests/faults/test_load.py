"""Load, bounded and on loopback only: 10,000 runs over 2 real worker processes while 500 SSE
clients tail 500 of them through a real ``agentstream serve`` (uvicorn). Every run ends exactly
once with dense seqs, every client gets every user-visible event of its run in order, the
projector reaches zero drift. Prints runs/s, SSE delivery latency p50/p99 and the max RSS."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.faults.topology import (
    TERMINAL,
    RedisServer,
    Topology,
    assert_runs_ended_exactly_once,
    environment,
    fresh_database,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]

RUNS = 10_000
TAILED = 500  # runs submitted over HTTP, each tailed by one SSE client
WAVES = 20  # bulk and tailed submits interleave, so clients tail runs while the queues are deep
TAILED_PARAMS = {"steps": 4, "delay_ms": 100}  # long enough that a client is tailing, not replaying
BULK_PARAMS = {"steps": 2, "delay_ms": 0}
START_DELAY_S = 2.0
DEADLINE_S = 150  # a hard bound on the whole load, far below the CI limit


@pytest.fixture
def load_topology(redis_server: RedisServer, tmp_path: Path) -> Iterator[Topology]:
    with fresh_database() as database_url:
        topo = Topology(environment(redis_server.url, database_url), tmp_path / "processes.log")
        try:
            topo.start(worker_args=("--processes", "2", "--concurrency", "64"))
            yield topo
        finally:
            topo.stop()


@dataclass
class Tail:
    """One SSE client's view of one run: (seq, type, event ts, received at) per frame."""

    run_id: str
    frames: list[tuple[int, str, float, float]] = field(default_factory=list)
    connected_at: float = 0.0
    reconnects: int = 0


async def tail(client: httpx.AsyncClient, topo: Topology, state: Tail) -> None:
    """A browser-like EventSource: on a cut it reconnects with ``Last-Event-ID``."""
    url = f"{topo.api}/runs/{state.run_id}/events/"
    while True:
        headers = dict(topo.headers)
        if state.frames:
            headers["Last-Event-ID"] = str(state.frames[-1][0])
        try:
            async with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 204:
                    return
                assert response.status_code == 200, response.status_code
                state.connected_at = state.connected_at or time.time()
                event_id = None
                async for line in response.aiter_lines():
                    if line.startswith("id: "):
                        event_id = int(line[4:])
                    elif line.startswith("data: ") and event_id is not None:
                        data = json.loads(line[6:])
                        ts = dt.datetime.fromisoformat(data["ts"]).timestamp()
                        state.frames.append((event_id, data["type"], ts, time.time()))
                        if data["type"] in TERMINAL:
                            return
        except httpx.HTTPError:
            pass
        state.reconnects += 1
        await asyncio.sleep(0.2)  # a client's reconnect delay, not synchronisation


async def submit_tailed(client: httpx.AsyncClient, topo: Topology) -> str:
    # scheduled a moment ahead, so its client is tailing (not replaying) when the run starts
    run_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=START_DELAY_S)
    body = {
        "agent_key": "sleepy-agent",
        "messages": [],
        "params": TAILED_PARAMS,
        "run_at": run_at.isoformat(),
    }
    response = await client.post(f"{topo.api}/runs/", headers=topo.headers, json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def drive(topo: Topology) -> tuple[list[str], list[Tail], float]:
    """Submit the bulk through the store and the tailed runs over HTTP, in interleaved waves;
    every tailed run gets its SSE client at once. Returns run ids, tails, submit start."""
    from agentstream.core.settings import Settings
    from agentstream.core.store import EventStore, SubmitRequest, redis_from_url

    settings = Settings(
        REDIS_URL=topo.env["REDIS_URL"], KEY_PREFIX=topo.env["AGENTSTREAM_KEY_PREFIX"], PARTITIONS=4
    )
    store = EventStore(redis_from_url(settings.REDIS_URL), settings, pipeline_scripts=True)
    bulk = SubmitRequest(agent_key="sleepy-agent", owner="load", params=BULK_PARAMS)
    limits = httpx.Limits(max_connections=TAILED + 50, max_keepalive_connections=TAILED + 50)
    run_ids: list[str] = []
    tails: list[Tail] = []
    tasks: list[asyncio.Task[None]] = []
    started = time.time()
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=30), limits=limits) as client:
        per_wave_bulk, per_wave_tailed = (RUNS - TAILED) // WAVES, TAILED // WAVES
        for _ in range(WAVES):
            results = await asyncio.gather(*(store.submit(bulk) for _ in range(per_wave_bulk)))
            run_ids += [r.run_id for r in results]
            tailed = await asyncio.gather(*(submit_tailed(client, topo) for _ in range(per_wave_tailed)))
            for run_id in tailed:
                state = Tail(run_id)
                tails.append(state)
                tasks.append(asyncio.create_task(tail(client, topo, state)))
            run_ids += tailed
        done, pending = await asyncio.wait(tasks, timeout=DEADLINE_S)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()  # an assertion inside a client fails the test here
        assert not pending, f"{len(pending)} SSE clients never saw their run end:\n{topo.log()[-3000:]}"
    await store.redis.aclose()
    return run_ids, tails, started


def expected_frames(topo: Topology, run_ids: list[str]) -> dict[str, list[tuple[int, str]]]:
    """What the stream holds for each run, filtered as a default SSE client sees it."""
    from agentstream.core.settings import Settings
    from agentstream.core.store import EventStore, redis_from_url
    from agentstream.django_app.sse.framing import VisibilityFilter

    async def read() -> dict[str, list[tuple[int, str]]]:
        settings = Settings(KEY_PREFIX=topo.env["AGENTSTREAM_KEY_PREFIX"], PARTITIONS=4)
        store = EventStore(redis_from_url(topo.env["REDIS_URL"]), settings)
        wanted = VisibilityFilter()
        try:
            out = {}
            for run_id in run_ids:
                events = await store.read_run(run_id)
                out[run_id] = [(e.seq, e.type) for e in events if wanted.wants(e)]
            return out
        finally:
            await store.redis.aclose()

    return asyncio.run(read())


def max_rss_mb(topo: Topology) -> dict[str, float]:
    """Peak RSS (VmHWM) of each agentstream process, the worker's spawned children included."""
    parents = {p.pid: name for name, p in topo.processes.items()}
    peaks: dict[str, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid, ppid = int(entry), int(fields.get("PPid", "0"))
        name = parents.get(pid) or (f"{parents[ppid]} process" if ppid in parents else None)
        if name and "VmHWM" in fields:
            kib = int(fields["VmHWM"].split()[0])
            peaks[name] = max(peaks.get(name, 0.0), kib / 1024)
    return peaks


class DatabaseConnections(threading.Thread):
    """Samples how many connections the topology holds to its database (a monitor, no sync)."""

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True)
        self.database_url, self.peak, self.done = database_url, 0, threading.Event()

    def run(self) -> None:
        import psycopg

        name = urlparse(self.database_url).path.lstrip("/")
        admin = urlparse(self.database_url)._replace(path="/postgres").geturl()
        with psycopg.connect(admin, autocommit=True) as conn:
            while not self.done.wait(0.2):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
                ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def test_ten_thousand_runs_over_two_workers_with_500_sse_clients_lose_nothing(
    redis_server: RedisServer, load_topology: Topology, capsys: pytest.CaptureFixture[str]
) -> None:
    from agentstream.core.keys import Keys

    topo = load_topology
    keys = Keys(prefix=topo.env["AGENTSTREAM_KEY_PREFIX"], partitions=4)
    connections = DatabaseConnections(topo.env["DATABASE_URL"])
    connections.start()
    try:
        run_ids, tails, started = asyncio.run(drive(topo))
    finally:
        connections.done.set()
        connections.join(5)
    # 500 open streams hold no database connection; only requests in flight do (25 per wave)
    assert connections.peak <= 60, f"{connections.peak} database connections at the peak"
    assert len(run_ids) == RUNS and len(set(run_ids)) == RUNS

    r = redis_server.client()

    ended = {b"succeeded", b"failed", b"cancelled", b"timed_out"}
    waiting = list(run_ids)

    def all_ended() -> bool:
        nonlocal waiting
        topo.assert_alive()
        with r.pipeline(transaction=False) as pipe:
            for run_id in waiting:
                pipe.hget(keys.run_state(run_id), "status")
            statuses = pipe.execute()
        waiting = [run_id for run_id, s in zip(waiting, statuses, strict=True) if s not in ended]
        return not waiting

    wait_until(all_ended, DEADLINE_S, "every run to end")
    elapsed_s = time.time() - started
    rss = max_rss_mb(topo)

    endings = assert_runs_ended_exactly_once(r, keys, run_ids)
    assert set(endings.values()) == {"run.succeeded"}, {e for e in endings.values()}

    expected = expected_frames(topo, [t.run_id for t in tails])
    latencies_ms: list[float] = []
    for state in tails:
        got = [(seq, kind) for seq, kind, _, _ in state.frames]
        assert got == expected[state.run_id], (state.run_id, got, expected[state.run_id])
        assert [kind for _, kind in got].count("progress") == TAILED_PARAMS["steps"]
        # delivery latency of the frames that happened while the client was tailing (not replays)
        latencies_ms += [(recv - ts) * 1000 for _, _, ts, recv in state.frames if ts >= state.connected_at]
    assert latencies_ms, "no frame was delivered live"

    wait_until(lambda: topo.manage("verify_projections", check=False).returncode == 0, 90, "zero drift")
    topo.assert_alive()

    figures = {
        "runs": RUNS,
        "sse_clients": TAILED,
        "elapsed_s": round(elapsed_s, 1),
        "runs_per_s": round(RUNS / elapsed_s, 1),
        "sse_latency_p50_ms": round(percentile(latencies_ms, 50), 1),
        "sse_latency_p99_ms": round(percentile(latencies_ms, 99), 1),
        "sse_live_frames": len(latencies_ms),
        "sse_reconnects": sum(t.reconnects for t in tails),
        "max_rss_mb": {k: round(v, 1) for k, v in sorted(rss.items())},
        "max_db_connections": connections.peak,
    }
    with capsys.disabled():
        print(f"\nload figures: {json.dumps(figures)}")

"""``sse``: one ASGI process (uvicorn) holding SSE clients, fed by ONE hub per process.

Each round starts a fresh server process (so memory figures are its own) and measures, for N
clients (1k / 5k / 10k), spread 10 per run:

* held: every client connected and replayed, then idle — server RSS per client (KiB), and the
  Redis connections the server's hubs hold (``CLIENT LIST`` by name): constant in N is the goal;
* latency at 1k clients: 200 events/s appended through the store (the workers' path, a Lua
  script per event), each to one run, so 2,000 frames/s; stamped at append; p50 / p99 from
  append to the client reading the frame (goal p99 < 50 ms). Quick mode: 100 clients.

Clients are raw asyncio sockets in this process (cheap enough to hold 10k on this machine).
``python -m benchmarks.sse serve PORT`` is the server side (settings configured in code).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis

from agentstream.core.events import NewEvent
from agentstream.core.gctune import freeze_startup_heap
from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.settings import Settings
from agentstream.core.store import Claim, EventStore, SubmitRequest, redis_from_url
from benchmarks.common import Options, Record, free_port, summarize

CLIENTS_PER_RUN = 10
EVENTS_PER_S = 200  # appended, each fanned out to its run's 10 clients: 2,000 frames/s
SECRET_KEY = "agentstream-bench-sse"


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# -- the server process -----------------------------------------------------------------------


def serve(port: int, redis_url: str, prefix: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY=SECRET_KEY,
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        USE_TZ=True,
        ROOT_URLCONF="agentstream.django_app.urls",
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "rest_framework",
            "agentstream.django_app",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        AGENTSTREAM={
            "REDIS_URL": redis_url,
            "KEY_PREFIX": prefix,
            "PARTITIONS": 16,
            "SSE_KEEPALIVE_SECONDS": 30,
        },
        LOGGING_CONFIG=None,
    )
    django.setup()
    import uvicorn
    from django.core.asgi import get_asgi_application

    raise_fd_limit()
    uvicorn.run(
        get_asgi_application(),
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
        lifespan="off",
        backlog=16384,
        timeout_keep_alive=60,
    )


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.process.kill()  # no graceful drain of held streams: the measurement is over
        self.process.wait(10)


async def start_server(redis_url: str, prefix: str) -> Server:
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 (started once per round, before timing)
        [sys.executable, "-m", "benchmarks.sse", "serve", str(port), redis_url, prefix],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return Server(port, process)
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the SSE benchmark server did not start") from None
            await asyncio.sleep(0.1)


# -- clients ----------------------------------------------------------------------------------


def token(database_url: str) -> tuple[str, str]:
    """An anonymous session token the server accepts (same SECRET_KEY, same signer)."""
    from benchmarks import django_env

    # the one configuration every scenario shares (before any import that reads settings)
    django_env.configure(database_url)
    from django.test.utils import override_settings

    from agentstream.django_app.api.authentication import issue_token

    # the server process has a SECRET_KEY of its own
    with override_settings(SECRET_KEY=SECRET_KEY):
        session, signed = issue_token()
    return signed, session.id


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    latencies_ms: list[float] = field(default_factory=list)
    events: int = 0
    more: asyncio.Event = field(default_factory=asyncio.Event)

    async def received(self, n: int) -> None:
        while self.events < n:
            await self.more.wait()
            self.more.clear()

    async def read_events(self) -> None:
        """Parse frames; a ``data:`` line carries the append time in its payload (``t``, ns)."""
        try:
            async for line in self.reader:
                if line.startswith(b"data: "):
                    sent_ns = orjson.loads(line[6:])["payload"].get("t")
                    if sent_ns:
                        self.latencies_ms.append((time.time_ns() - sent_ns) / 1e6)
                        self.events += 1
                        self.more.set()
        except (ConnectionError, asyncio.CancelledError):
            pass

    def close(self) -> None:
        self.writer.close()


async def connect(port: int, run_id: str, auth: str) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(
        (
            f"GET /runs/{run_id}/events/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            f"X-Anonymous-Token: {auth}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"SSE connect failed: {status!r} {await reader.read(500)!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass  # headers
    while b"retry:" not in await reader.readline():
        pass  # the first frame: the stream is open
    return Client(reader, writer)


async def connect_all(
    port: int, run_ids: list[str], auth: str, n: int, concurrency: int = 200
) -> list[Client]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Client:
        async with gate:
            return await connect(port, run_ids[i % len(run_ids)], auth)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def running_runs(store: EventStore, owner: str, n: int) -> list[Claim]:
    results = await asyncio.gather(
        *(store.submit(SubmitRequest(agent_key="bench", owner=owner)) for _ in range(n))
    )
    await store.ensure_groups(["bench"])
    claims: list[Claim] = []
    for partition in range(store.settings.PARTITIONS):
        queue = store.keys.queue(partition, "bench")
        reply = await store.redis.xreadgroup(WORKERS_GROUP, "bench", {queue: ">"}, count=100_000)
        for _, entries in reply or []:
            for job_id, fields in entries:
                claim = await store.begin_attempt(fields[b"r"].decode(), job_id.decode(), "bench", "bench")
                assert isinstance(claim, Claim)
                claims.append(claim)
    assert len(claims) == len(results)
    return claims


async def sse_connections(client: aioredis.Redis) -> int:
    listing = await client.client_list()
    return sum(1 for c in listing if c.get("name") == "agentstream-sse")


async def one_round(opts: Options, n: int, latency_events: int) -> dict[str, float]:
    prefix = f"bsse{uuid.uuid4().hex[:8]}"
    settings = Settings(REDIS_URL=opts.redis_url, KEY_PREFIX=prefix, PARTITIONS=16)
    store = EventStore(redis_from_url(opts.redis_url), settings, pipeline_scripts=True)
    auth, session_id = token(opts.database_url)
    server = await start_server(opts.redis_url, prefix)
    clients: list[Client] = []
    try:
        claims = await running_runs(store, f"anon:{session_id}", max(1, n // CLIENTS_PER_RUN))
        await connect_all(server.port, [claims[0].run_id], auth, 1)  # warm the server up
        base_rss = server.rss_kib()
        start = time.perf_counter()
        clients = await connect_all(server.port, [c.run_id for c in claims], auth, n)
        connect_s = time.perf_counter() - start
        await asyncio.sleep(0.5)  # let the hub settle its reads
        out = {
            "rss_per_client_kib": (server.rss_kib() - base_rss) / n,
            "redis_connections": float(await sse_connections(store.redis)),
            "connect_per_s": n / connect_s,
        }
        if latency_events:
            # The clients live in this process, which imported every scenario and peer: a full
            # collection of that heap took 100-300 ms and showed up as the hub's p99. Measure the
            # hub, not our own collector (core/gctune.py, what workers do at start-up).
            freeze_startup_heap()
            readers = [asyncio.create_task(c.read_events()) for c in clients]
            # a steady rate over the runs (not bursts): what a fleet of workers streaming looks like
            began = time.monotonic()
            for i in range(latency_events):
                claim = claims[i % len(claims)]
                await store.append_many(
                    claim.run_id, claim.attempt, [NewEvent("bench.tick", {"t": time.time_ns()})]
                )
                delay = began + (i + 1) / EVENTS_PER_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            per_client = latency_events // len(claims)
            with contextlib.suppress(TimeoutError):  # a lost frame shows as fewer "delivered"
                await asyncio.wait_for(asyncio.gather(*(c.received(per_client) for c in clients)), 30)
            latencies = sorted(x for c in clients for x in c.latencies_ms)
            out["p50_ms"] = statistics.median(latencies)
            out["p99_ms"] = latencies[int(len(latencies) * 0.99) - 1]
            out["p999_ms"] = latencies[int(len(latencies) * 0.999) - 1]
            out["delivered"] = float(len(latencies))
            for reader in readers:
                reader.cancel()
        return out
    finally:
        for c in clients:
            c.close()
        server.stop()
        keys = [k async for k in store.redis.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await store.redis.delete(*keys[i : i + 500])
        await store.redis.aclose()


async def main(opts: Options) -> list[Record]:
    raise_fd_limit()
    sizes = [100] if opts.quick else [1000, 5000, 10_000]
    if opts.n:
        sizes = [opts.n]
    latency_n = 1000 if 1000 in sizes else sizes[-1]  # quick: at 100 clients
    samples: dict[tuple[int, str], list[float]] = {}
    for _ in range(opts.rounds):
        for n in sizes:  # alternate the sizes within each round
            got = await one_round(
                opts, n, latency_events=(100 if opts.quick else 1000) if n == latency_n else 0
            )
            for metric, value in got.items():
                samples.setdefault((n, metric), []).append(value)
    units = {
        "rss_per_client_kib": "KiB",
        "redis_connections": "connections",
        "connect_per_s": "clients/s",
        "p50_ms": "ms",
        "p99_ms": "ms",
        "p999_ms": "ms",
        "delivered": "frames",
    }
    return [
        summarize("sse", "agentstream hub", f"{metric} @{n} clients", units[metric], n, values)
        for (n, metric), values in samples.items()
    ]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        sys.exit(
            "usage: python -m benchmarks.sse serve PORT REDIS_URL KEY_PREFIX (or: python -m benchmarks sse)"
        )

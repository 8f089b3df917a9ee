from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, Redis, redis_from_url
from benchmarks.pgvector_server import PgvectorServer
from benchmarks.pgvector_server import binaries as pgvector_binaries
from tests.cluster import RedisClusterServers, binaries
from tests.services import REDIS_UP, REDIS_URL, require

# the live `agentstream demo` fixture, shared by the demo, dashboard and README tests
pytest_plugins = ["tests.demo.live"]


BACKENDS = ["fakeredis", "redis"]
# suites that must hold on Redis Cluster too override ``redis_url`` with these params
WITH_CLUSTER = [*BACKENDS, pytest.param("cluster", marks=[pytest.mark.redis, pytest.mark.cluster])]


def backend_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        require("Redis", REDIS_UP)
        return REDIS_URL
    if request.param == "cluster":
        return str(request.getfixturevalue("cluster_url"))
    return f"fakeredis://{uuid.uuid4().hex}"


@pytest.fixture(params=BACKENDS)
def redis_url(request: pytest.FixtureRequest) -> str:
    """Every contract test runs twice: on fakeredis (the embedded twin) and on real Redis."""
    return backend_url(request)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster of the session's own (skipped locally without the binaries)."""
    require("redis-server and redis-cli (Redis Cluster tests)", binaries() is not None)
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def cluster_url(redis_cluster: RedisClusterServers) -> str:
    return redis_cluster.url


@pytest.fixture
def settings_factory() -> type[Settings]:
    return Settings


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = redis_from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def key_prefix() -> str:
    """A prefix of this test's own, so tests never see each other's keys on a shared Redis."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(redis_client: Redis, key_prefix: str) -> AsyncIterator[EventStore]:
    settings = Settings(KEY_PREFIX=key_prefix, PARTITIONS=4, RETRY_BACKOFF_BASE=0.01)
    yield EventStore(redis_client, settings)
    await delete_prefix(redis_client, key_prefix)


async def delete_prefix(client: Redis, prefix: str) -> None:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            await client.delete(*batch)
            batch.clear()
    if batch:
        await client.delete(*batch)


@pytest.fixture(scope="session", params=["0.6", "0.8"], ids=lambda v: f"pgvector-{v}")
def pgvector_server(request: pytest.FixtureRequest) -> Iterator[PgvectorServer]:
    """A PostgreSQL with pgvector of the session's own, one per pgvector release we test against
    (without the wheels: skipped locally, a failure in CI; `make install` installs both)."""
    version = str(request.param)
    require(f"a PostgreSQL with pgvector {version} (make install)", pgvector_binaries(version) is not None)
    server = PgvectorServer(pgvector=version)
    try:
        server.start()
        yield server
    finally:
        server.stop()

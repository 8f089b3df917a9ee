"""The store's contract holds on fakeredis, real Redis AND a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, redis_from_url
from tests.conftest import WITH_CLUSTER, backend_url, delete_prefix


@pytest.fixture(params=WITH_CLUSTER)
def redis_url(request: pytest.FixtureRequest) -> str:
    return backend_url(request)


@pytest.fixture
async def batched(redis_url: str, key_prefix: str) -> AsyncIterator[EventStore]:
    """A worker's store: its script calls batched (``pipeline_scripts``), on a client of its own."""
    client = redis_from_url(redis_url)
    store = EventStore(client, Settings(KEY_PREFIX=key_prefix, PARTITIONS=4), pipeline_scripts=True)
    yield store
    await store.aclose()
    await delete_prefix(client, key_prefix)
    await client.aclose()

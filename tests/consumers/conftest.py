from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, Redis
from tests.conftest import delete_prefix


@pytest.fixture
def worker_settings(key_prefix: str) -> Settings:
    return Settings(
        KEY_PREFIX=key_prefix,
        PARTITIONS=4,
        LEASE_TTL_SECONDS=1.0,
        RETRY_BACKOFF_BASE=2.0,
        RETRY_BACKOFF_MAX=60.0,
        MAX_RETRIES=3,
        SHUTDOWN_GRACE_SECONDS=5.0,
    )


@pytest.fixture
async def wstore(redis_client: Redis, worker_settings: Settings) -> AsyncIterator[EventStore]:
    """A worker's store (scripts pipelined) on its own key prefix, on fakeredis and real Redis."""
    yield EventStore(redis_client, worker_settings, pipeline_scripts=True)
    await delete_prefix(redis_client, worker_settings.KEY_PREFIX)

"""The store's contract holds on fakeredis, real Redis AND a Redis Cluster."""

from __future__ import annotations

import pytest

from tests.conftest import WITH_CLUSTER, backend_url


@pytest.fixture(params=WITH_CLUSTER)
def redis_url(request: pytest.FixtureRequest) -> str:
    return backend_url(request)

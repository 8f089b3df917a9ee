"""Fixtures of the fault tests: a redis-server of the test's own and the production topology on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.topology import RedisServer, Topology, environment, fresh_database, running_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from running_redis(tmp_path / "redis")


@pytest.fixture
def topology(redis_server: RedisServer, tmp_path: Path) -> Iterator[Topology]:
    with fresh_database() as database_url:
        topo = Topology(environment(redis_server.url, database_url), tmp_path / "processes.log")
        try:
            topo.start()
            yield topo
        finally:
            topo.stop()

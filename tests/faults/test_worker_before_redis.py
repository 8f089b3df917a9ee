"""A worker started before its Redis (a deploy that brings them up together, a Redis that
restarts as the worker starts) waits for it, says so in one line, and serves once it answers; a
stop while it waits ends it cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agentstream.consumers.worker import Worker
from agentstream.core.settings import Settings
from agentstream.core.state import RunStatus
from agentstream.core.store import EventStore, SubmitRequest, redis_from_url
from tests.consumers import agents
from tests.consumers.helpers import wait_terminal, wait_until
from tests.faults.topology import RedisServer

pytestmark = [pytest.mark.faults]


async def test_a_worker_started_before_redis_waits_for_it_then_serves(tmp_path: Path, caplog: Any) -> None:
    server = RedisServer(tmp_path / "redis")
    server.directory.mkdir()
    settings = Settings.from_mapping({"REDIS_URL": server.url, "KEY_PREFIX": "wait", "PARTITIONS": 2})
    store = EventStore(redis_from_url(settings.REDIS_URL), settings)
    worker = Worker(store, agents.registry(), agent_keys=["echo"], handle_signals=False, block_ms=100)
    task = asyncio.create_task(worker.run())
    try:
        # nothing listens on the port yet: the worker says it waits
        await wait_until(lambda: "the worker starts once it answers" in caplog.text, 10, "the warning")
        assert not task.done()
        await asyncio.to_thread(server.start)
        run_id = (await store.submit(SubmitRequest("echo", "user:1"))).run_id
        state = await wait_terminal(store, run_id, timeout_s=15)
        assert state.status is RunStatus.SUCCEEDED
    finally:
        worker.stop(grace=False)
        await asyncio.wait_for(task, 20)
        await store.redis.aclose()
        server.stop()


async def test_a_worker_stopped_while_it_waits_for_redis_ends(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")  # never started
    settings = Settings.from_mapping({"REDIS_URL": server.url, "KEY_PREFIX": "wait", "PARTITIONS": 2})
    store = EventStore(redis_from_url(settings.REDIS_URL), settings)
    worker = Worker(store, agents.registry(), agent_keys=["echo"], handle_signals=False, block_ms=100)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.3)
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert worker.outcomes == {} or not any(worker.outcomes.values())
    await store.redis.aclose()


async def test_an_evicting_redis_found_once_it_answers_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agentstream.consumers.worker_main import WorkerConfig, serve

    server = RedisServer(tmp_path / "redis", extra_args=("--maxmemory-policy", "allkeys-lru"))
    server.directory.mkdir()
    server.start()
    try:
        settings = Settings.from_mapping({"REDIS_URL": server.url, "KEY_PREFIX": "wait", "PARTITIONS": 2})
        config = WorkerConfig(settings, agent_keys=("echo",), handle_signals=False, block_ms=100)
        with pytest.raises(SystemExit) as exited:
            await serve(config, agents.registry())
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("agentstream: ") and "maxmemory-policy" in err and "Traceback" not in err
    finally:
        server.stop()

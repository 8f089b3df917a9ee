"""An evicting Redis silently loses runs: every process that writes refuses to start against one,
with one line that says what to set. Proven on a redis-server of the test's own started with
``--maxmemory-policy allkeys-lru``."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from agentstream.core.errors import ConfigurationError
from agentstream.core.eviction import ensure_noeviction, eviction_policy
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, redis_from_url
from tests.faults.topology import CLI, RedisServer, environment, running_redis

LRU = ("--maxmemory-policy", "allkeys-lru")


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[RedisServer]:
    yield from running_redis(tmp_path / "lru", *LRU)


async def check(url: str, **settings: Any) -> None:
    client = redis_from_url(url)
    try:
        await ensure_noeviction(client, Settings(REDIS_URL=url, **settings))
    finally:
        await client.aclose()


async def test_an_evicting_redis_is_refused_with_one_line_that_says_what_to_set(
    evicting_redis: RedisServer,
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        await check(evicting_redis.url)
    message = str(refused.value)
    assert "'allkeys-lru'" in message and "maxmemory-policy noeviction" in message
    assert "ALLOW_EVICTING_REDIS" in message and "\n" not in message


async def test_a_noeviction_redis_is_accepted(tmp_path: Path) -> None:
    for server in running_redis(tmp_path / "safe", "--maxmemory-policy", "noeviction"):
        await check(server.url)


async def test_allow_evicting_redis_is_the_escape_hatch(evicting_redis: RedisServer) -> None:
    await check(evicting_redis.url, ALLOW_EVICTING_REDIS=True)
    assert Settings.from_env({"AGENTSTREAM_ALLOW_EVICTING_REDIS": "true"}).ALLOW_EVICTING_REDIS


async def test_with_config_renamed_the_policy_is_read_from_info(tmp_path: Path) -> None:
    for server in running_redis(tmp_path / "renamed", *LRU, "--rename-command", "CONFIG", ""):
        client = redis_from_url(server.url)
        try:
            assert await eviction_policy(client) == "allkeys-lru"
        finally:
            await client.aclose()
        with pytest.raises(ConfigurationError, match="allkeys-lru"):
            await check(server.url)


async def test_when_an_acl_denies_config_and_info_it_warns_once_and_goes_on(
    evicting_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = evicting_redis.client()
    admin.execute_command(
        "ACL", "SETUSER", "agentstream", "on", ">pw", "~*", "&*", "+@all", "-config", "-info"
    )
    admin.close()
    url = f"redis://agentstream:pw@127.0.0.1:{evicting_redis.port}/0"
    with caplog.at_level(logging.WARNING, logger="agentstream"):
        await check(url)
        await check(url)
    warnings = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warnings) == 1 and "noeviction" in warnings[0].getMessage()


async def test_fakeredis_is_not_checked() -> None:
    await check("fakeredis://eviction-check")


async def test_a_worker_refuses_to_run_on_an_evicting_redis(evicting_redis: RedisServer) -> None:
    from agentstream.consumers.worker import Worker
    from tests.consumers import agents

    client = redis_from_url(evicting_redis.url)
    store = EventStore(client, Settings(REDIS_URL=evicting_redis.url, KEY_PREFIX="evict"))
    try:
        worker = Worker(store, agents.registry(), agent_keys=["echo"], handle_signals=False, burst=True)
        with pytest.raises(ConfigurationError, match="allkeys-lru"):
            await worker.run()
        assert await client.keys("evict:*") == []  # refused before it created anything
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "command",
    [
        ("worker", "--processes", "2"),
        ("worker", "--processes", "1"),
        ("projector",),
        ("serve", "--port", "0"),
    ],
    ids=" ".join,
)
def test_agentstream_processes_refuse_to_start_on_an_evicting_redis(
    evicting_redis: RedisServer, command: tuple[str, ...]
) -> None:
    # the database is never reached: the check comes first
    env = environment(evicting_redis.url, "postgres://nobody@127.0.0.1:1/none")
    done = subprocess.run([*CLI, *command], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "maxmemory-policy 'allkeys-lru'" in last and "noeviction" in last, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_the_api_answers_a_json_500_naming_the_fix_on_an_evicting_redis(
    evicting_redis: RedisServer, settings: Any
) -> None:
    from django.test import Client

    from agentstream.django_app.api import backend
    from agentstream.django_app.api.authentication import issue_token

    settings.AGENTSTREAM = {"REDIS_URL": evicting_redis.url, "KEY_PREFIX": "evict", "PARTITIONS": 4}
    _, token = issue_token()
    try:
        response = Client(HTTP_X_ANONYMOUS_TOKEN=token).post(
            "/api/agents/runs/", {"agent_key": "echo"}, content_type="application/json"
        )
    finally:
        backend.shutdown()
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "configuration_error" and "noeviction" in error["message"]
    assert sync_redis.Redis(port=evicting_redis.port).keys("evict:*") == []


def test_a_command_starting_before_redis_warns_and_leaves_the_check_to_what_it_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from agentstream.core.eviction import ensure_noeviction_at_start
    from tests.services import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="agentstream"):
        ensure_noeviction_at_start(Settings(REDIS_URL=url))
    assert "unreachable" in caplog.text and "checked once it answers" in caplog.text


async def test_a_projector_starting_before_redis_waits_for_it_then_refuses_an_evicting_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from agentstream.core.eviction import ensure_noeviction_when_reachable

    server = RedisServer(tmp_path / "late", extra_args=LRU)
    server.directory.mkdir()
    client = redis_from_url(server.url)
    check = asyncio.create_task(
        ensure_noeviction_when_reachable(client, Settings(REDIS_URL=server.url), max_delay_s=0.2)
    )
    try:
        with caplog.at_level(logging.WARNING, logger="agentstream"):
            for _ in range(200):  # until it has failed to connect twice (a backstop of 10 s)
                if caplog.text.count("checking maxmemory-policy again") >= 2:
                    break
                await asyncio.wait({check}, timeout=0.05)
        assert not check.done(), check
        await asyncio.to_thread(server.start)
        with pytest.raises(ConfigurationError, match="allkeys-lru"):
            await asyncio.wait_for(check, 20)
    finally:
        check.cancel()
        await client.aclose()
        server.stop()

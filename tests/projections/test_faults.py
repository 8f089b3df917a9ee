"""Faults injected into real projector processes: kill -9 mid-batch, two processes stealing each
other's entries, PostgreSQL connections cut again and again. Real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connections

from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, redis_from_url
from agentstream.projections.logs import lag
from agentstream.projections.projection import ReadModelProjection
from agentstream.projections.replay import replay_events
from agentstream.projections.verify import log_events, verify_log
from tests.conftest import delete_prefix
from tests.projections.conftest import in_thread, make_workload, rows
from tests.services import POSTGRES_UP, REDIS_UP, REDIS_URL, require

pytestmark = [
    pytest.mark.django_db(databases=["default", "embedded"], transaction=True),
    pytest.mark.faults,
    pytest.mark.redis,
    pytest.mark.postgres,
]
ROOT = Path(__file__).resolve().parents[2]
GROUP = ReadModelProjection().group
PROJECTOR_APP = "agentstream-test-projector"


@pytest.fixture
async def real_store(key_prefix: str) -> AsyncIterator[EventStore]:
    require("Redis", REDIS_UP)
    require("PostgreSQL", POSTGRES_UP)
    client = redis_from_url(REDIS_URL)
    yield EventStore(client, Settings(KEY_PREFIX=key_prefix, PARTITIONS=4, RETRY_BACKOFF_BASE=0.01))
    await delete_prefix(client, key_prefix)
    await client.aclose()


@pytest.fixture
def spawn(key_prefix: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``runprojector`` as a real process on this test's keys and databases."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.django_settings",
            "PYTHONPATH": str(ROOT),
            "REDIS_URL": REDIS_URL,
            "PGAPPNAME": PROJECTOR_APP,  # libpq names the projector's connections: we cut only those
            "AGENTSTREAM_KEY_PREFIX": key_prefix,
            "AGENTSTREAM_TEST_DEFAULT_NAME": str(connections["default"].settings_dict["NAME"]),
            "AGENTSTREAM_TEST_EMBEDDED_NAME": str(connections["embedded"].settings_dict["NAME"]),
        }
        cmd = [
            sys.executable,
            "-m",
            "django",
            "runprojector",
            "--block-ms",
            "100",
            "--claim-every-s",
            "0.2",
            *args,
        ]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


async def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 60) -> None:
    """Poll a condition; the deadline is only a backstop."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def caught_up(store: EventStore) -> bool:
    return all(p.pending == 0 and p.undelivered == 0 for p in await lag(store.redis, store.keys, GROUP))


def pg_params() -> dict[str, Any]:
    s = connections["default"].settings_dict
    return {
        "dbname": s["NAME"],
        "user": s["USER"],
        "host": s["HOST"],
        "port": s["PORT"],
        "password": s["PASSWORD"],
    }


def pg_backends_waiting_on_a_lock() -> int:
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


async def test_a_projector_killed_mid_batch_restarts_and_verify_reports_zero_drift(
    real_store: EventStore, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    await make_workload(real_store, runs=30)
    # hold the runs table so the projector's first batch stops inside its transaction
    blocker = psycopg.connect(**pg_params())  # a plain connection of the test's own
    blocker.execute("LOCK TABLE agentstream_run IN ACCESS EXCLUSIVE MODE")
    try:
        victim = spawn("--batch", "20")
        await wait_for(lambda: in_thread(pg_backends_waiting_on_a_lock), "the projector to block mid-batch")
        summary: Any = await real_store.redis.xpending(real_store.keys.log(0), GROUP)
        in_flight = sum(
            [
                int((await real_store.redis.xpending(real_store.keys.log(p), GROUP))["pending"])
                for p in range(4)
            ]
        )
        assert in_flight > 0, summary  # delivered, uncommitted, unacked

        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        blocker.rollback()
        blocker.close()
    assert await in_thread(lambda: rows("default")["runs"]) == []  # the killed batch left nothing behind

    survivor = spawn("--burst", "--claim-idle-ms", "0")
    assert survivor.wait(timeout=90) == 0, survivor.communicate()

    assert await caught_up(real_store)
    report = await verify_log(real_store.redis, real_store.keys, "default")
    assert report.drift == () and report.runs_checked == 30


@pytest.mark.parametrize("database", ["default", "embedded"])
async def test_two_projector_processes_stealing_each_others_entries_converge_to_the_rows_of_one(
    real_store: EventStore, spawn: Callable[..., subprocess.Popen[bytes]], database: str
) -> None:
    await make_workload(real_store, runs=40)
    # claim-idle 0: each takes over what the other is still applying, so entries are
    # redelivered, applied twice, and committed out of order
    common = ("--burst", "--database", database, "--batch", "7", "--claim-idle-ms", "0")
    if database == "default":
        started = [spawn(*common), spawn(*common)]
    else:  # the same, through the command's own supervisor
        started = [spawn(*common, "--processes", "2")]
    for proc in started:
        assert proc.wait(timeout=120) == 0, proc.communicate()
    assert await caught_up(real_store)
    assert (await verify_log(real_store.redis, real_store.keys, database)).drift == ()
    by_two = await in_thread(rows, database)

    # the same history applied once, in order, by one writer
    events = [e async for e in log_events(real_store.redis, real_store.keys)]

    def rebuild() -> None:
        with connections[database].cursor() as cursor:
            for table in ("run", "conversation", "event", "conversationevent", "checkpoint"):
                cursor.execute(f"DELETE FROM agentstream_{table}")
        replay_events([ReadModelProjection()], [events], database)

    await in_thread(rebuild)
    assert await in_thread(rows, database) == by_two


def terminate_projector_backends() -> int:
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            [PROJECTOR_APP],
        )
        return int(cursor.fetchone()[0])


async def test_a_projector_whose_postgres_connections_are_cut_recovers_and_loses_nothing(
    real_store: EventStore, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    projector = spawn("--batch", "10")
    cuts: list[int] = []

    async def cut() -> bool:
        # whatever connection the projector holds now, mid-batch or between batches; none while it
        # is between a failure and its reconnect, so try again until one is cut
        cuts.append(await in_thread(terminate_projector_backends))
        return cuts[-1] > 0

    for round_ in range(6):
        await make_workload(real_store, runs=5, seed=round_)
        await wait_for(cut, "a projector connection to cut")
    await wait_for(lambda: caught_up(real_store), "the projector to catch up", timeout_s=90)

    projector.send_signal(signal.SIGTERM)
    _, stderr = projector.communicate(timeout=60)
    assert projector.returncode == 0, stderr.decode()[-2000:]
    assert sum(cuts) >= 6
    assert b"retry" in stderr  # it noticed the cuts and retried
    report = await verify_log(real_store.redis, real_store.keys, "default")
    assert report.drift == () and report.runs_checked == 30

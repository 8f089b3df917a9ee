"""run_finished and RUN_COMPLETED_HOOK: once per terminal run, from the logs, never twice.

Redelivery, a second projector, a replay of the logs from the start and a worker killed mid-run
(tests/consumers/test_worker_processes.py style, in a real subprocess) must all notify once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentstream.core.errors import ConfigurationError
from agentstream.core.events import EventType
from agentstream.core.settings import Settings
from agentstream.core.state import RunStatus
from agentstream.core.store import EventStore, SubmitRequest, redis_from_url
from agentstream.projections.notify import (
    MAX_DELIVERIES,
    RunFinished,
    RunFinishedProjection,
    run_finished,
)
from agentstream.projections.projection import load_projections
from agentstream.projections.projector import Projector, ProjectorOptions
from tests.conftest import delete_prefix
from tests.consumers.helpers import wait_for_event, wait_terminal, wait_until
from tests.consumers.processes import WorkerProcess, start_worker, worker_env
from tests.projections import notify_hooks
from tests.projections.conftest import in_thread, make_workload
from tests.services import POSTGRES_UP, REDIS_UP, REDIS_URL, require

pytestmark = pytest.mark.django_db(databases=["default", "embedded"], transaction=True)

HOOK = "tests.projections.notify_hooks.record"


@pytest.fixture(autouse=True)
def calls() -> Iterator[list[RunFinished]]:
    notify_hooks.calls.clear()
    yield notify_hooks.calls
    notify_hooks.calls.clear()


@pytest.fixture
def signalled() -> Iterator[list[RunFinished]]:
    got: list[RunFinished] = []

    def receiver(sender: Any, finished: RunFinished, **_: Any) -> None:
        got.append(finished)

    run_finished.connect(receiver, weak=False)
    yield got
    run_finished.disconnect(receiver)


def notifier(
    store: EventStore, database: str, hook: str | None = HOOK, consumer: str | None = None
) -> Projector:
    return Projector(
        store.redis,
        store.keys,
        RunFinishedProjection(hook),
        database=database,
        options=ProjectorOptions(block_ms=50),
        consumer=consumer,
    )


async def replay_group_from_start(store: EventStore, group: str) -> None:
    for p in range(store.keys.partitions):
        await store.redis.xgroup_setid(store.keys.log(p), group, "0")


async def notified_at(database: str) -> list[tuple[str, bool]]:
    from django.db import connections

    def read() -> list[tuple[str, bool]]:
        with connections[database].cursor() as cursor:
            cursor.execute(
                "SELECT run_id, notified_at IS NOT NULL FROM agentstream_runnotice ORDER BY run_id"
            )
            return [(str(r), bool(n)) for r, n in cursor.fetchall()]

    return await in_thread(read)


async def test_every_terminal_run_fires_the_hook_and_the_signal_once_with_its_status(
    store: EventStore, database: str, calls: list[RunFinished], signalled: list[RunFinished]
) -> None:
    work = await make_workload(store, runs=12)
    still_queued = (await store.submit(SubmitRequest("echo", "user:1"))).run_id
    await notifier(store, database).run(burst=True)

    terminal = {}
    for run_id in work.run_ids:
        state = await store.run_state(run_id)
        if state is not None and state.status.is_terminal:
            terminal[run_id] = state.status
    assert len({*terminal.values()}) >= 3  # succeeded, failed, cancelled...
    assert sorted(c.run_id for c in calls) == sorted(terminal)
    assert {c.run_id: c.status for c in calls} == terminal
    assert sorted(s.run_id for s in signalled) == sorted(terminal)
    assert still_queued not in {c.run_id for c in calls}
    assert all(done for _, done in await notified_at(database))


async def test_redelivery_a_second_projector_and_a_replay_from_the_start_never_notify_twice(
    store: EventStore, database: str, calls: list[RunFinished]
) -> None:
    await make_workload(store, runs=8)
    await notifier(store, database, consumer="a").run(burst=True)
    first = sorted(c.run_id for c in calls)
    assert first

    await replay_group_from_start(store, "projection:run_finished")
    await notifier(store, database, consumer="b").run(burst=True)
    await replay_group_from_start(store, "projection:run_finished")
    await notifier(store, database, consumer="a").run(burst=True)

    assert sorted(c.run_id for c in calls) == first


async def test_a_failed_batch_is_rolled_back_and_notifies_nothing_until_it_commits(
    store: EventStore, database: str, calls: list[RunFinished]
) -> None:
    await make_workload(store, runs=6)
    projector = notifier(store, database)
    original = projector.projection.handle
    failures = iter([True])

    def handle_then_fail(events: Any, connection: Any) -> None:
        original(events, connection)  # claims the runs in the transaction...
        if next(failures, False):
            raise RuntimeError("the database went away")  # ...which is rolled back

    projector.projection.handle = handle_then_fail  # type: ignore[method-assign]
    projector.options = ProjectorOptions(block_ms=50, backoff_base_s=0.001)
    await projector.run(burst=True)
    assert projector.failures == 1
    assert calls and len({c.run_id for c in calls}) == len(calls)


async def test_a_raising_hook_is_logged_and_the_signal_still_fires(
    store: EventStore, database: str, signalled: list[RunFinished], caplog: pytest.LogCaptureFixture
) -> None:
    await make_workload(store, runs=4)
    await notifier(store, database, hook="tests.projections.notify_hooks.explode").run(burst=True)
    assert signalled
    assert any("RUN_COMPLETED_HOOK raised" in r.getMessage() for r in caplog.records)


def test_the_projection_is_configured_by_run_completed_hook_and_a_bad_path_is_one_line() -> None:
    assert "run_finished" not in [p.name for p in load_projections(Settings())]
    names = [p.name for p in load_projections(Settings(RUN_COMPLETED_HOOK=HOOK))]
    assert names == ["read_model", "stores", "run_finished"]
    listed = Settings(
        PROJECTIONS=("agentstream.projections.notify.RunFinishedProjection",), RUN_COMPLETED_HOOK=HOOK
    )
    assert [p.name for p in load_projections(listed)] == ["read_model", "stores", "run_finished"]
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        load_projections(Settings(RUN_COMPLETED_HOOK="tests.projections.notify_hooks.missing"))
    with pytest.raises(ConfigurationError, match="is not callable"):
        load_projections(Settings(RUN_COMPLETED_HOOK="tests.projections.notify_hooks.not_callable"))


@pytest.mark.redis
@pytest.mark.faults
@pytest.mark.slow
async def test_a_run_whose_worker_is_killed_mid_run_is_reclaimed_finished_and_notified_exactly_once(
    key_prefix: str, tmp_path: Path, database: str, calls: list[RunFinished]
) -> None:
    require("Redis", REDIS_UP)
    client = redis_from_url(REDIS_URL)
    store = EventStore(client, Settings(KEY_PREFIX=key_prefix, PARTITIONS=4, LEASE_TTL_SECONDS=1))
    workers: list[WorkerProcess] = []

    def spawn() -> WorkerProcess:
        worker = start_worker(worker_env(key_prefix, REDIS_URL), tmp_path, "--concurrency", "2")
        workers.append(worker)
        worker.wait_for_log(" serving ")
        return worker

    try:
        run_id = (
            await store.submit(SubmitRequest("ticker", "user:1", params={"ticks": 20, "every_s": 0.05}))
        ).run_id
        first = spawn()
        await wait_for_event(store, run_id, "tick")
        # the projector is live while the worker dies: it sees attempt 1's events, then attempt 2's
        await notifier(store, database).run(burst=True)
        first.signal(signal.SIGKILL)
        first.wait()
        spawn()
        state = await wait_terminal(store, run_id, timeout_s=30)
        assert state.status is RunStatus.SUCCEEDED and state.attempt == 2
        await notifier(store, database).run(burst=True)
        await replay_group_from_start(store, "projection:run_finished")
        await notifier(store, database, consumer="another").run(burst=True)

        assert [(c.run_id, c.status, c.attempt) for c in calls] == [(run_id, RunStatus.SUCCEEDED, 2)]
        assert await notified_at(database) == [(run_id, True)]
    finally:
        for worker in workers:
            worker.stop()
        await delete_prefix(client, key_prefix)
        await client.aclose()


async def sweeps(projector: Projector, times: int = 1) -> list[int]:
    """What a running projector's periodic sweep does, ``times`` over; then closes it."""
    try:
        return [await projector.sweep() for _ in range(times)]
    finally:
        await projector.close()


def died_after_commit(projector: Projector) -> Projector:
    """The projector's process "dies" between COMMIT and the receivers: it never calls them."""
    projector.projection.notify = lambda finished, connection: None  # type: ignore[method-assign]
    return projector


async def test_a_notice_whose_projector_died_after_commit_is_delivered_once_by_the_next_sweep(
    store: EventStore, database: str, calls: list[RunFinished]
) -> None:
    await make_workload(store, runs=8)
    dead = died_after_commit(notifier(store, database, consumer="dead"))
    dead.projection.lease = timedelta(0)  # type: ignore[attr-defined]
    await dead.run(burst=True)
    assert not calls and not any(done for _, done in await notified_at(database))

    survivor = notifier(store, database, consumer="survivor")  # its first loop sweeps at once
    await survivor.run(burst=True)
    delivered = sorted(c.run_id for c in calls)
    assert delivered and delivered == sorted(r for r, _ in await notified_at(database))
    assert all(done for _, done in await notified_at(database))
    assert any(c.payload for c in calls)  # the same RunFinished, payload included, from the outbox

    assert await sweeps(notifier(store, database, consumer="third")) == [0]
    await notifier(store, database, consumer="fourth").run(burst=True)
    assert sorted(c.run_id for c in calls) == delivered  # delivered: never again


async def test_a_notice_under_a_live_lease_is_not_swept_and_a_hook_that_keeps_killing_its_process_is_capped(
    store: EventStore, database: str, calls: list[RunFinished]
) -> None:
    await make_workload(store, runs=6)
    holder = died_after_commit(notifier(store, database, consumer="holder"))  # lease: 300 s
    await holder.run(burst=True)
    assert await sweeps(notifier(store, database, consumer="other")) == [0]  # the lease is live

    crasher = died_after_commit(notifier(store, database, consumer="crasher"))
    crasher.projection.lease = timedelta(0)  # type: ignore[attr-defined]
    from django.db import connections

    def expire_all() -> None:
        with connections[database].cursor() as cursor:
            cursor.execute(
                "UPDATE agentstream_runnotice SET lease_until = %s", [datetime(2000, 1, 1, tzinfo=UTC)]
            )

    await in_thread(expire_all)
    swept = await sweeps(crasher, MAX_DELIVERIES + 1)
    total = len(await notified_at(database))
    assert swept == [total] * (MAX_DELIVERIES - 1) + [0, 0]  # claims 2..5, then left alone
    assert await sweeps(notifier(store, database, consumer="late")) == [0]
    assert not calls


ROOT = Path(__file__).resolve().parents[2]


def start_projector(database: str, key_prefix: str, tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    """``runprojector`` of the run_finished projection only, as a real process on this test's keys
    and databases, with ``notify_hooks.recorded_in_a_file`` as the hook."""
    from django.db import connections

    environ = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.projections.notify_settings",
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": REDIS_URL,
        "AGENTSTREAM_KEY_PREFIX": key_prefix,
        "AGENTSTREAM_TEST_DEFAULT_NAME": str(connections["default"].settings_dict["NAME"]),
        "AGENTSTREAM_TEST_EMBEDDED_NAME": str(connections["embedded"].settings_dict["NAME"]),
        "NOTIFY_LOG": str(tmp_path / "calls.log"),
        **env,
    }
    cmd = [
        sys.executable, "-m", "django", "runprojector", "--projections", "run_finished",
        "--database", database, "--batch", "3", "--block-ms", "100",
        "--claim-idle-ms", "500", "--claim-every-s", "0.2", "--sweep-every-s", "0.2",
    ]  # fmt: skip
    with open(tmp_path / "stderr.log", "ab") as stderr:  # the child keeps its own copy
        return subprocess.Popen(cmd, env=environ, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)


def recorded_calls(tmp_path: Path) -> list[tuple[int, str]]:
    log_file = tmp_path / "calls.log"
    if not log_file.exists():
        return []
    return [
        (int(pid), run_id) for pid, run_id in (line.split() for line in log_file.read_text().splitlines())
    ]


@pytest.mark.redis
@pytest.mark.faults
@pytest.mark.slow
async def test_a_projector_killed_inside_the_hook_after_commit_is_restarted_and_the_run_is_still_notified(
    key_prefix: str, tmp_path: Path, database: str
) -> None:
    require("Redis", REDIS_UP)
    client = redis_from_url(REDIS_URL)
    store = EventStore(client, Settings(KEY_PREFIX=key_prefix, PARTITIONS=4))
    started: list[subprocess.Popen[bytes]] = []
    try:
        work = await make_workload(store, runs=12)
        terminal = set()
        for run_id in work.run_ids:
            state = await store.run_state(run_id)
            if state is not None and state.status.is_terminal:
                terminal.add(run_id)
        blocked_file = tmp_path / "blocked"
        # the first projector delivers two runs, then hangs in the hook of the third: after the
        # COMMIT that claimed it, before notified_at; kill -9 it there
        victim = start_projector(
            database, key_prefix, tmp_path, NOTIFY_BLOCK_AFTER="2", NOTIFY_BLOCKED=str(blocked_file)
        )
        started.append(victim)
        await wait_until(blocked_file.exists, timeout_s=60, what="the first projector to hang in the hook")
        victim.kill()
        victim.wait(timeout=30)
        blocked_run = blocked_file.read_text()
        before = recorded_calls(tmp_path)
        assert [pid for pid, _ in before] == [victim.pid] * 2 and blocked_run in terminal

        survivor = start_projector(database, key_prefix, tmp_path)
        started.append(survivor)

        async def all_confirmed() -> bool:
            rows = await notified_at(database)
            return len(rows) == len(terminal) and all(done for _, done in rows)

        await wait_until(all_confirmed, timeout_s=60, what="every notice to be delivered and confirmed")
        calls_made = recorded_calls(tmp_path)
        assert sorted(run_id for _, run_id in calls_made) == sorted(terminal)  # each run exactly once
        assert (survivor.pid, blocked_run) in calls_made  # the run the victim died in
        assert calls_made[:2] == before  # what the victim confirmed is never delivered again
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        await delete_prefix(client, key_prefix)
        await client.aclose()


@pytest.mark.postgres
async def test_on_postgresql_a_sweep_skips_the_notices_another_projector_holds_instead_of_waiting(
    store: EventStore, calls: list[RunFinished]
) -> None:
    require("PostgreSQL", POSTGRES_UP)
    import psycopg
    from django.db import connections

    await make_workload(store, runs=6)
    dead = died_after_commit(notifier(store, "default", consumer="dead"))
    dead.projection.lease = timedelta(0)  # type: ignore[attr-defined]
    await dead.run(burst=True)
    due = len(await notified_at("default"))

    s = connections["default"].settings_dict
    other = psycopg.connect(
        dbname=s["NAME"], user=s["USER"], host=s["HOST"], port=s["PORT"], password=s["PASSWORD"]
    )
    try:
        other.execute("SELECT run_id FROM agentstream_runnotice FOR UPDATE")  # another sweep, mid-claim
        held = await asyncio.wait_for(sweeps(notifier(store, "default", consumer="a")), 10)
        assert held == [0] and not calls  # skipped at once: never blocked, never delivered twice
    finally:
        other.rollback()
        other.close()
    assert await sweeps(notifier(store, "default", consumer="b")) == [due]
    assert len(calls) == due


async def test_with_no_hook_and_no_receiver_the_notices_are_confirmed_in_one_go(
    store: EventStore, database: str
) -> None:
    await make_workload(store, runs=6)
    await notifier(store, database, hook=None).run(burst=True)
    rows = await notified_at(database)
    assert rows and all(done for _, done in rows)


async def test_a_run_whose_output_json_cannot_hold_is_notified_and_does_not_stall_the_projection(
    store: EventStore, database: str, calls: list[RunFinished]
) -> None:
    """msgpack keeps int keys and 1,024 levels of nesting, orjson neither: the outbox row is
    written anyway (int keys as strings, a too-deep payload as a note) and the hook still hears."""
    from tests.projections.conftest import AGENT, claim

    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(300):
        inner["a"] = {}
        inner = inner["a"]
    run_ids = []
    for output in ({1: "one", 2: "two"}, deep):
        run_id = (await store.submit(SubmitRequest(AGENT, "user:1"))).run_id
        c = await claim(store, run_id)
        await store.finish(run_id, c.attempt, EventType.RUN_SUCCEEDED, {"output": output})
        run_ids.append(run_id)
    projector = notifier(store, database)
    await asyncio.wait_for(projector.run(burst=True), 30)  # it retried the batch for ever
    assert projector.failures == 0
    assert sorted(c.run_id for c in calls) == sorted(run_ids)
    assert all(done for _, done in await notified_at(database))

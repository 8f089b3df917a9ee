"""run_finished and RUN_COMPLETED_HOOK: once per terminal run, from the logs, never twice.

Redelivery, a second projector, a replay of the logs from the start and a worker killed mid-run
(tests/consumers/test_worker_processes.py style, in a real subprocess) must all notify once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings
from agentstream.core.state import RunStatus
from agentstream.core.store import EventStore, SubmitRequest, redis_from_url
from agentstream.projections.notify import RunFinished, RunFinishedProjection, run_finished
from agentstream.projections.projection import load_projections
from agentstream.projections.projector import Projector, ProjectorOptions
from tests.conftest import delete_prefix
from tests.consumers.helpers import wait_for_event, wait_terminal
from tests.consumers.processes import WorkerProcess, start_worker, worker_env
from tests.projections import notify_hooks
from tests.projections.conftest import in_thread, make_workload
from tests.services import REDIS_UP, REDIS_URL, require

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

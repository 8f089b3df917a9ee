"""``manage.py runagent`` as users run it: a real process, real Redis, the project's settings."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentstream.core.settings import Settings
from agentstream.core.state import RunStatus
from agentstream.core.store import EventStore, SubmitRequest, redis_from_url
from tests.conftest import delete_prefix
from tests.consumers import agents
from tests.consumers.helpers import wait_for_event, wait_terminal
from tests.consumers.processes import ROOT
from tests.services import REDIS_UP, REDIS_URL, require

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
async def rstore(key_prefix: str) -> AsyncIterator[EventStore]:
    require("Redis", REDIS_UP)
    client = redis_from_url(REDIS_URL)
    yield EventStore(client, Settings(KEY_PREFIX=key_prefix, PARTITIONS=4, LEASE_TTL_SECONDS=1))
    await delete_prefix(client, key_prefix)
    await client.aclose()


@pytest.fixture
def runagent(key_prefix: str, tmp_path: Path) -> Iterator[Any]:
    started: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(*args: str, debug: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
        env.update(
            TEST_KEY_PREFIX=key_prefix,
            TEST_DEBUG="1" if debug else "0",
            REDIS_URL=REDIS_URL,
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            DJANGO_SETTINGS_MODULE="tests.consumers.runagent_settings",
        )
        log_path = tmp_path / f"runagent-{len(started)}.log"
        log_file = log_path.open("wb")
        command = [sys.executable, "-m", "django", "runagent", "--queue-poll-interval", "0.2", *args]
        proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        started.append((proc, log_file))
        return proc, log_path

    yield start
    for proc, log_file in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the reloader's child too
            proc.wait(10)
        log_file.close()


def wait_for_log(path: Path, text: str, count: int = 1, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while path.read_text(errors="replace").count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} x{count} not in the log after {timeout_s}s:\n{path.read_text()}")
        time.sleep(0.05)


async def submit(store: EventStore, agent_key: str, **kw: Any) -> str:
    return (await store.submit(SubmitRequest(agent_key, "user:1", **kw))).run_id


async def test_runagent_burst_drains_the_queue_and_exits(rstore: EventStore, runagent: Any) -> None:
    run_ids = [await submit(rstore, "echo") for _ in range(10)]
    proc, log = runagent("--burst", "--concurrency", "4")
    assert proc.wait(60) == 0, log.read_text()
    for run_id in run_ids:
        assert (await rstore.run_state(run_id)).status is RunStatus.SUCCEEDED  # type: ignore[union-attr]
    assert log.read_text().count(" succeeded (attempt 1)") == 10  # one line per state change


async def test_runagent_with_two_processes_runs_jobs_in_both(rstore: EventStore, runagent: Any) -> None:
    run_ids = [await submit(rstore, "sleeper", params={"sleep_s": 0.1}) for _ in range(30)]
    proc, log = runagent("--burst", "--processes", "2", "--concurrency", "3")
    assert proc.wait(90) == 0, log.read_text()
    pids = set()
    for run_id in run_ids:
        events = await rstore.read_run(run_id)
        assert events[-1].type == "run.succeeded"
        pids.add(next(e for e in events if e.type == "run.started").payload["worker"].split(":")[1])
    assert len(pids) == 2


async def test_runagent_in_debug_reloads_on_a_code_change_and_keeps_serving(
    rstore: EventStore, runagent: Any
) -> None:
    proc, log = runagent("--concurrency", "2", debug=True)
    wait_for_log(log, " serving ")
    first = await submit(rstore, "echo")
    assert (await wait_terminal(rstore, first, timeout_s=20)).status is RunStatus.SUCCEEDED
    deadline = time.monotonic() + 30
    while log.read_text().count(" serving ") < 2:
        # what saving the file in an editor does (again, if the reloader had not looked yet)
        os.utime(agents.__file__)
        assert time.monotonic() < deadline, log.read_text()
        await asyncio.sleep(0.5)
    second = await submit(rstore, "echo")
    assert (await wait_terminal(rstore, second, timeout_s=20)).status is RunStatus.SUCCEEDED
    assert proc.poll() is None
    assert "Traceback" not in log.read_text()


async def test_runagent_in_debug_hands_its_runs_back_on_a_code_change(
    rstore: EventStore, runagent: Any
) -> None:
    """The reloader ended the process with the run in it: the run waited out its lease and its
    reclaim spent an attempt (with max_attempts=1 one save failed it). Now the worker hands it
    back first, and the reloaded process starts it again at once."""
    proc, log = runagent("--concurrency", "2", debug=True)
    wait_for_log(log, " serving ")
    run_id = await submit(rstore, "sleeper", params={"sleep_s": 60}, max_attempts=1)
    await wait_for_event(rstore, run_id, "assistant.delta", timeout_s=20)
    deadline = time.monotonic() + 30
    while log.read_text().count(" serving ") < 2:
        os.utime(agents.__file__)
        assert time.monotonic() < deadline, log.read_text()
        await asyncio.sleep(0.5)
    deadline = time.monotonic() + 20
    while [e.type for e in await rstore.read_run(run_id)].count("run.started") < 2:
        assert time.monotonic() < deadline, (await rstore.read_run(run_id), log.read_text())
        await asyncio.sleep(0.1)
    state = await rstore.run_state(run_id)
    assert state is not None and state.status is RunStatus.RUNNING, state
    assert (
        await rstore.redis.hget(rstore.keys.run_state(run_id), "given") == b"1"
    )  # handed back, not reclaimed
    assert proc.poll() is None and "Traceback" not in log.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--agent-keys", "nope"), "no runtime is registered for agent key 'nope'"),
        (("--concurrency", "-1"), "concurrency -1: it must be at least 1"),
    ],
)
def test_runagent_with_processes_refuses_a_bad_configuration_once_instead_of_restarting(
    runagent: Any, args: tuple[str, ...], message: str
) -> None:
    proc, log = runagent("--processes", "2", *args)
    assert proc.wait(30) == 2, log.read_text()  # a supervisor restarting in a loop never exits
    assert log.read_text().count(message) == 1, log.read_text()
    assert "Traceback" not in log.read_text()


class StoppableWorker:
    """What HandBackOnReload asks of a worker: ``stop(grace=...)``."""

    def __init__(self, on_stop: Any = None) -> None:
        self.stops: list[bool] = []
        self.on_stop = on_stop

    def stop(self, *, grace: bool = True) -> None:
        self.stops.append(grace)
        if self.on_stop:
            self.on_stop()


async def test_a_template_change_leaves_the_worker_serving() -> None:
    """Django reloads no process for a template (its receiver answers True): stopping the worker
    then left the process up with no worker until the next .py change."""
    from agentstream.django_app.management.commands.runagent import HandBackOnReload

    hand_back = HandBackOnReload(wait_s=5)
    worker = StoppableWorker()
    hand_back.on_serving(worker)  # type: ignore[arg-type]
    started = time.monotonic()
    for path in ("app/templates/page.html", "locale/de/LC_MESSAGES/django.mo"):
        await asyncio.to_thread(hand_back.file_changed, None, Path(path))
    assert worker.stops == [] and time.monotonic() - started < 1


async def test_a_code_change_stops_the_worker_and_waits_for_its_hand_back() -> None:
    from agentstream.django_app.management.commands.runagent import HandBackOnReload

    hand_back = HandBackOnReload(wait_s=5)
    worker = StoppableWorker(on_stop=hand_back.stopped.set)  # what work() does once run() returns
    hand_back.on_serving(worker)  # type: ignore[arg-type]
    await asyncio.to_thread(hand_back.file_changed, None, Path("app/agents.py"))
    assert worker.stops == [False] and hand_back.stopped.is_set()


async def test_a_code_change_before_the_worker_serves_stops_it_as_it_starts() -> None:
    """It waited the whole hand-back time while the worker started and claimed runs, which the
    restart then killed."""
    from agentstream.django_app.management.commands.runagent import HandBackOnReload

    hand_back = HandBackOnReload(wait_s=0.2)
    await asyncio.to_thread(hand_back.file_changed, None, Path("app/agents.py"))
    worker = StoppableWorker()
    hand_back.on_serving(worker)  # type: ignore[arg-type]
    assert worker.stops == [False]

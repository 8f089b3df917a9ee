"""Faults injected into real worker processes on real Redis: kill -9, SIGSTOP, poison, SIGTERM.

Every worker here is a subprocess (``python -m agentstream.consumers.worker_main``) with a 1 s
lease; the assertions read the runs' events from Redis.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentstream.core.settings import Settings
from agentstream.core.state import RunStatus
from agentstream.core.store import EventStore, SubmitRequest, redis_from_url
from tests.conftest import delete_prefix
from tests.consumers.helpers import types, wait_for_event, wait_terminal, wait_until
from tests.consumers.processes import WorkerProcess, start_worker, worker_env
from tests.services import REDIS_UP, REDIS_URL, require

pytestmark = [pytest.mark.redis, pytest.mark.faults, pytest.mark.slow]


@pytest.fixture
async def rstore(key_prefix: str) -> AsyncIterator[EventStore]:
    require("Redis", REDIS_UP)
    client = redis_from_url(REDIS_URL)
    yield EventStore(client, Settings(KEY_PREFIX=key_prefix, PARTITIONS=4, LEASE_TTL_SECONDS=1))
    await delete_prefix(client, key_prefix)
    await client.aclose()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture
def spawn(key_prefix: str, tmp_path: Path, workers: list[WorkerProcess]) -> Any:
    def spawn(*args: str, **settings: object) -> WorkerProcess:
        worker = start_worker(worker_env(key_prefix, REDIS_URL, **settings), tmp_path, *args)
        workers.append(worker)
        worker.wait_for_log(" serving ")
        return worker

    return spawn


async def submit(store: EventStore, agent_key: str, **kw: Any) -> str:
    return (await store.submit(SubmitRequest(agent_key, "user:1", **kw))).run_id


async def test_a_run_whose_worker_is_killed_is_reclaimed_after_the_lease_and_succeeds_once(
    rstore: EventStore, spawn: Any
) -> None:
    run_id = await submit(rstore, "ticker", params={"ticks": 20, "every_s": 0.05})
    first = spawn("--concurrency", "2")
    await wait_for_event(rstore, run_id, "tick")
    first.signal(signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic()
    second = spawn("--concurrency", "2")
    state = await wait_terminal(rstore, run_id, timeout_s=30)
    assert state.status is RunStatus.SUCCEEDED
    assert time.monotonic() - killed_at < 10
    events = await rstore.read_run(run_id)
    assert types(events).count("run.succeeded") == 1
    assert [e.attempt for e in events if e.type == "run.started"] == [1, 2]
    assert any(e.type == "tick" and e.attempt == 1 for e in events)  # the killed attempt's events stay
    assert events[-1].payload["output"]["pid"] == second.pid


async def test_a_worker_paused_past_its_lease_cannot_append_after_resuming_and_gives_up_the_run(
    rstore: EventStore, spawn: Any
) -> None:
    run_id = await submit(rstore, "ticker", params={"ticks": 60, "every_s": 0.05})
    paused = spawn("--concurrency", "2")
    await wait_for_event(rstore, run_id, "tick")
    paused.signal(signal.SIGSTOP)
    spawn("--concurrency", "2")
    deadline = time.monotonic() + 20
    while not [e for e in await rstore.read_run(run_id) if e.type == "run.started" and e.attempt == 2]:
        assert time.monotonic() < deadline, "nobody reclaimed the stalled run"
        await asyncio.sleep(0.05)
    paused.signal(signal.SIGCONT)
    paused.wait_for_log(f"run {run_id} fenced")  # it noticed, stopped its task, and let go
    state = await wait_terminal(rstore, run_id, timeout_s=30)
    assert state.status is RunStatus.SUCCEEDED and state.attempt == 2
    events = await rstore.read_run(run_id)
    takeover = next(e for e in events if e.type == "run.started" and e.attempt == 2)
    zombie_writes = [e for e in events if e.seq > takeover.seq and e.attempt != 2]
    assert zombie_writes == []
    assert events[-1].payload["output"]["pid"] != paused.pid


async def test_cancelling_a_run_in_a_worker_process_ends_it_within_100_ms(
    rstore: EventStore, spawn: Any
) -> None:
    run_id = await submit(rstore, "sleeper", params={"sleep_s": 60})
    spawn("--concurrency", "2")
    await wait_for_event(rstore, run_id, "assistant.delta")
    await rstore.cancel(run_id, reason="stop")
    state = await wait_terminal(rstore, run_id)
    assert state.status is RunStatus.CANCELLED
    events = await rstore.read_run(run_id)
    requested = next(e for e in events if e.type == "run.cancel_requested")
    assert types(events)[-2:] == ["agent.cleanup", "run.cancelled"]  # the cancel hook ran first
    took_ms = events[-1].ts_ms - requested.ts_ms
    print(f"run.cancel_requested -> run.cancelled (hook and flush included): {took_ms} ms")
    assert took_ms < 100


async def test_a_poison_run_that_kills_its_workers_is_dead_lettered_after_the_cap(
    rstore: EventStore, spawn: Any
) -> None:
    run_id = await submit(rstore, "poison", max_attempts=2)
    supervisor = spawn("--concurrency", "2", "--processes", "2")  # restarts the children it kills
    state = await wait_terminal(rstore, run_id, timeout_s=40)
    assert state.status is RunStatus.FAILED
    events = await rstore.read_run(run_id)
    assert types(events).count("run.started") == 2  # never a third delivery
    assert events[-1].payload["error"]["type"] == "MaxAttemptsExceeded"
    dead = await rstore.redis.xrange(rstore.keys.dead(rstore.keys.run_partition(run_id)))
    assert [f[b"r"].decode() for _, f in dead] == [run_id]
    assert "restarting it" in supervisor.log()
    family = _descendants(supervisor.pid)  # the forkserver and the workers it forked
    assert len(family) >= 3
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(20) == 0
    # nothing outlives the supervisor (a helper may take a moment to see it gone)
    await wait_until(lambda: not [pid for pid in family if _alive(pid)], 5, "its processes exit")


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out += [int(child), *_descendants(int(child))]
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def test_workers_with_different_agent_keys_run_only_their_own_jobs_and_lose_none(
    rstore: EventStore, spawn: Any
) -> None:
    echo_runs = [
        await submit(rstore, "echo", messages=[{"role": "user", "content": str(i)}]) for i in range(30)
    ]
    other_runs = [await submit(rstore, "other") for _ in range(30)]
    echo_worker = spawn("--agent-keys", "echo", "--concurrency", "4")
    other_worker = spawn("--agent-keys", "other", "--concurrency", "4")
    for run_ids, worker in ((echo_runs, echo_worker), (other_runs, other_worker)):
        for run_id in run_ids:
            assert (await wait_terminal(rstore, run_id, timeout_s=30)).status is RunStatus.SUCCEEDED
            events = await rstore.read_run(run_id)
            starts = [e for e in events if e.type == "run.started"]
            assert len(starts) == 1
            assert starts[0].payload["worker"].split(":")[1] == str(worker.pid)


async def test_sigterm_lets_in_flight_runs_finish_and_hands_the_rest_to_another_worker(
    rstore: EventStore, spawn: Any
) -> None:
    quick = [await submit(rstore, "sleeper", params={"sleep_s": 0.5}) for _ in range(2)]
    slow = await submit(rstore, "sleeper", params={"sleep_s": 60, "later_sleep_s": 0.1})
    draining = spawn("--concurrency", "3", SHUTDOWN_GRACE_SECONDS=2)
    for run_id in [*quick, slow]:
        await wait_for_event(rstore, run_id, "assistant.delta")
    waiting = [await submit(rstore, "echo") for _ in range(3)]
    draining.signal(signal.SIGTERM)
    assert draining.wait(20) == 0
    for run_id in quick:
        assert (await rstore.run_state(run_id)).status is RunStatus.SUCCEEDED  # type: ignore[union-attr]
    assert f"run {slow} handed back" in draining.log()
    for run_id in waiting:
        assert (await rstore.run_state(run_id)).status is RunStatus.QUEUED  # type: ignore[union-attr]
    handed_back = time.monotonic()
    successor = spawn("--concurrency", "3")
    state = await wait_terminal(rstore, slow, timeout_s=20)
    assert state.status is RunStatus.SUCCEEDED and state.attempt == 2
    assert time.monotonic() - handed_back < 5  # picked up at once, not after waiting out a lease
    for run_id in waiting:
        assert (await wait_terminal(rstore, run_id)).status is RunStatus.SUCCEEDED
        started = next(e for e in await rstore.read_run(run_id) if e.type == "run.started")
        assert started.payload["worker"].split(":")[1] == str(successor.pid)


async def test_a_workers_metrics_port_counts_outcomes_retries_and_a_reclaim_after_a_kill(
    rstore: EventStore, spawn: Any
) -> None:
    import socket

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ticker = await submit(rstore, "ticker", params={"ticks": 20, "every_s": 0.05})
    first = spawn("--concurrency", "2")
    await wait_for_event(rstore, ticker, "tick")
    first.signal(signal.SIGKILL)
    first.wait()
    echoes = [await submit(rstore, "echo") for _ in range(2)]
    flaky = await submit(rstore, "flaky", max_attempts=2)
    spawn("--concurrency", "4", "--metrics-port", str(port), RETRY_BACKOFF_BASE="0.01")
    for run_id in [ticker, *echoes, flaky]:
        await wait_terminal(rstore, run_id, timeout_s=30)

    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    samples = {
        (s.name, s.labels.get("outcome", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("agentstream_worker_reclaims_total", "")] == 1
    assert samples[("agentstream_worker_attempts_total", "succeeded")] == 3  # the ticker and two echoes
    assert samples[("agentstream_worker_attempts_total", "retrying")] == 1
    assert samples[("agentstream_worker_attempts_total", "failed")] == 1
    assert samples[("agentstream_worker_running", "")] == 0


async def test_a_worker_with_log_format_json_writes_one_object_per_line_with_the_runs_fields(
    rstore: EventStore, spawn: Any
) -> None:
    import json

    worker = spawn("--concurrency", "2", LOG_FORMAT="json")
    run_id = await submit(rstore, "echo", messages=[{"role": "user", "content": "a private message"}])
    await wait_terminal(rstore, run_id, timeout_s=30)
    worker.wait_for_log("succeeded")
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    about_run = [line for line in lines if line.get("run_id") == run_id]
    assert [line["message"].split()[2] for line in about_run] == ["started:", "succeeded"]
    assert all(
        line["attempt"] == 1 and line["agent_key"] == "echo" and line["worker_id"] for line in about_run
    )
    assert "a private message" not in worker.log()

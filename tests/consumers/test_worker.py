"""The worker engine in-process, on fakeredis and on real Redis: outcomes, retries, cancel, order."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from agentstream.consumers.worker import Worker
from agentstream.core.events import EventType
from agentstream.core.ids import idempotency_partition
from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.state import RunStatus
from agentstream.core.store import Claim, EventStore, RetryOutcome, SubmitRequest, now_ms
from tests.conftest import WITH_CLUSTER, backend_url
from tests.consumers import agents
from tests.consumers.helpers import burst, running_worker, types, wait_for_event, wait_terminal, wait_until
from tests.core.storetools import job_of


@pytest.fixture(params=WITH_CLUSTER)
def redis_url(request: pytest.FixtureRequest) -> str:
    """This suite runs on Redis Cluster too."""
    return backend_url(request)


async def submit(store: EventStore, agent_key: str, **kw: Any) -> str:
    messages = kw.pop("messages", [{"role": "user", "content": "hi"}])
    result = await store.submit(SubmitRequest(agent_key, "user:1", messages=messages, **kw))
    return result.run_id


async def test_a_run_succeeds_with_its_events_in_order_and_usage_merged(wstore: EventStore) -> None:
    run_id = await submit(wstore, "echo")
    worker = await burst(wstore)
    events = await wstore.read_run(run_id)
    assert types(events) == ["run.queued", "run.started", "assistant.message", "run.succeeded"]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    done = events[-1].payload
    assert done["output"] == {"echo": "hi"}
    assert done["usage"] == {"prompt_tokens": 3, "completion_tokens": 3}  # RunResult + record_usage
    assert done["final_messages"] == [{"role": "assistant", "content": "echo: hi"}]
    assert events[1].payload["worker"] == worker.worker_id
    assert worker.worker_id.count(":") == 2  # host:pid:random


async def test_jobs_waiting_when_the_worker_reads_are_begun_in_the_script_call_that_reads_them(
    wstore: EventStore,
) -> None:
    calls = {"begin_attempt": 0, "claim_jobs": 0}
    for name in calls:
        original = getattr(wstore, name)

        async def counting(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            calls[_name] += 1
            return await _original(*args, **kw)

        setattr(wstore, name, counting)
    run_ids = [await submit(wstore, "echo") for _ in range(12)]
    await burst(wstore)
    for run_id in run_ids:
        assert types(await wstore.read_run(run_id))[-1] == "run.succeeded"
    assert calls["claim_jobs"] >= 1 and calls["begin_attempt"] == 0, calls


async def test_agents_never_run_more_than_concurrency_at_once(wstore: EventStore) -> None:
    agents.COUNTED.update(now=0, most=0)
    # each run lasts long enough that a loaded machine still fills all three slots
    run_ids = [await submit(wstore, "counted", params={"sleep_s": 0.1}) for _ in range(12)]
    await burst(wstore, concurrency=3, agent_keys=["counted"])
    for run_id in run_ids:
        assert types(await wstore.read_run(run_id))[-1] == "run.succeeded"
    assert agents.COUNTED["most"] == 3


async def test_the_next_claim_rides_behind_a_runs_last_write(wstore: EventStore) -> None:
    """One slot: a claim made while a run's finish is on the wire can only come from that
    slot, freed as the write left (not when its reply came back)."""
    calls: list[str] = []
    original_finish, original_claim = wstore.finish, wstore.claim_jobs

    async def finish(run_id: str, *args: Any, **kw: Any) -> Any:
        calls.append(f"finish {run_id}")
        try:
            return await original_finish(run_id, *args, **kw)
        finally:
            calls.append(f"finished {run_id}")

    async def claim_jobs(*args: Any, **kw: Any) -> Any:
        calls.append("claim")
        return await original_claim(*args, **kw)

    wstore.finish = finish  # type: ignore[method-assign]
    wstore.claim_jobs = claim_jobs  # type: ignore[method-assign]
    agents.COUNTED.update(now=0, most=0)
    run_ids = [await submit(wstore, "counted") for _ in range(6)]
    await burst(wstore, concurrency=1, agent_keys=["counted"])
    assert agents.COUNTED["most"] == 1
    for run_id in run_ids:
        assert types(await wstore.read_run(run_id))[-1] == "run.succeeded"
        on_the_wire = calls[calls.index(f"finish {run_id}") : calls.index(f"finished {run_id}")]
        assert "claim" in on_the_wire, calls


async def test_many_deltas_are_coalesced_into_a_few_writes_and_the_last_ones_ride_with_finish(
    wstore: EventStore,
) -> None:
    appended: list[int] = []
    with_finish: list[int] = []
    original_append, original_finish = wstore.append_many, wstore.finish

    async def counting_append(run_id: str, attempt: int, events: Any, **kw: Any) -> Any:
        batch = list(events)
        appended.append(len(batch))
        return await original_append(run_id, attempt, batch, **kw)

    async def counting_finish(*args: Any, events: Any = (), **kw: Any) -> Any:
        batch = list(events)
        with_finish.append(len(batch))
        return await original_finish(*args, events=batch, **kw)

    wstore.append_many = counting_append  # type: ignore[method-assign]
    wstore.finish = counting_finish  # type: ignore[method-assign]
    run_id = await submit(wstore, "streamer", params={"n": 500})
    await burst(wstore)
    events = await wstore.read_run(run_id)
    deltas = [e.payload["delta"] for e in events if e.type == "assistant.delta"]
    assert deltas == [f"{i} " for i in range(500)]
    assert sum(appended) + sum(with_finish) == 501
    assert len(appended) <= 5 and len(with_finish) == 1, (appended, with_finish)
    assert types(events)[-2:] == ["assistant.message", "run.succeeded"]


async def test_a_queued_run_that_is_cancelled_never_starts(wstore: EventStore) -> None:
    run_id = await submit(wstore, "echo")
    outcome = await wstore.cancel(run_id, reason="changed my mind")
    assert outcome.cancelled
    await burst(wstore)
    assert types(await wstore.read_run(run_id)) == ["run.queued", "run.cancelled"]


async def test_cancelling_a_running_agent_cancels_its_task_within_100_ms_and_calls_its_cancel_hook(
    wstore: EventStore,
) -> None:
    async with running_worker(wstore):
        run_id = await submit(wstore, "sleeper", params={"sleep_s": 60})
        await asyncio.wait_for(agents.started(run_id).wait(), 10)
        requested = time.monotonic()
        await wstore.cancel(run_id, reason="user pressed stop")
        state = await wait_terminal(wstore, run_id)
    took_ms = (agents.CANCELLED_AT[run_id] - requested) * 1000
    print(f"cancel request -> agent task cancelled: {took_ms:.1f} ms")
    assert took_ms < 100, took_ms
    assert state.status is RunStatus.CANCELLED
    assert ("cancel", run_id) in agents.HOOKS_CALLED
    events = await wstore.read_run(run_id)
    assert types(events)[-3:] == ["run.cancel_requested", "agent.cleanup", "run.cancelled"]
    assert events[-1].payload["partial_output"] == {"content": "thinking"}


async def test_a_run_over_its_timeout_ends_timed_out(wstore: EventStore) -> None:
    run_id = await submit(wstore, "sleeper", params={"sleep_s": 60}, timeout_s=0.3)
    started = time.monotonic()
    await burst(wstore)
    assert time.monotonic() - started < 5
    events = await wstore.read_run(run_id)
    assert events[-1].type == "run.timed_out"
    assert events[-1].payload["error"]["type"] == "RunTimeout"


@pytest.mark.slow
async def test_retriable_errors_back_off_exponentially_and_resume_from_the_checkpoint(
    wstore: EventStore,
) -> None:
    run_id = await submit(wstore, "flaky", params={"succeed_on": 3})
    await burst(wstore)
    events = await wstore.read_run(run_id)
    assert events[-1].type == "run.succeeded"
    assert events[-1].payload["output"] == {"attempts_seen": [1, 2, 3]}  # get_state saw earlier checkpoints
    retrying = [e for e in events if e.type == "run.retrying"]
    starts = [e for e in events if e.type == "run.started"]
    assert len(retrying) == 2 and len(starts) == 3
    for n, (retry, next_start) in enumerate(zip(retrying, starts[1:], strict=True), start=1):
        delay_s = retry.payload["delay_s"]
        assert 0.5 * 2**n <= delay_s <= 2**n  # base ** attempt, jittered into [0.5, 1]
        waited_s = (next_start.ts_ms - retry.ts_ms) / 1000
        assert delay_s <= waited_s + 0.01 < delay_s + 1.0, (n, delay_s, waited_s)
        assert retry.payload["error"]["type"] == "ConnectionResetError"


async def test_retry_with_a_fixed_delay_waits_that_long(wstore: EventStore) -> None:
    run_id = await submit(wstore, "retry-later", params={"delay_s": 0.4})
    await burst(wstore)
    events = await wstore.read_run(run_id)
    retry = next(e for e in events if e.type == "run.retrying")
    second = [e for e in events if e.type == "run.started"][1]
    assert retry.payload["delay_s"] == 0.4
    assert 400 <= second.ts_ms - retry.ts_ms < 1400
    assert events[-1].payload["output"] == {"attempt": 2}


@pytest.mark.parametrize("delay", ["nan", "inf", "1e306"])
async def test_a_retry_delay_that_is_no_number_of_seconds_is_an_error_retried_after_the_backoff(
    wstore: EventStore, delay: str
) -> None:
    """Retry(delay_s=nan/inf) passed the "not negative" check, then crashed the job task when the
    retry was scheduled: the run waited out its lease and was reclaimed until dead-lettered. A
    finite delay too long for a millisecond due time (1e306 s: OverflowError) did the same."""
    run_id = await submit(wstore, "retry-later", params={"delay_s": float(delay)})
    await asyncio.wait_for(burst(wstore), 20)
    events = await wstore.read_run(run_id)
    retry = next(e for e in events if e.type == "run.retrying")
    assert retry.payload["error"]["type"] == "ValueError"
    assert "the delay must be a finite number of seconds" in retry.payload["error"]["message"]
    assert 0 < retry.payload["delay_s"] <= 2  # the backoff's
    assert events[-1].payload["output"] == {"attempt": 2}


def test_a_retry_delay_set_after_the_check_falls_back_to_the_backoff() -> None:
    from agentstream.consumers.errors import Retry
    from agentstream.consumers.outcome import decide_failure

    for bad in (float("nan"), float("inf"), -1.0, 1e306):
        exc = Retry("later", delay_s=1.0)
        exc.delay_s = bad
        decision = decide_failure(exc, None, attempt=1, base=2.0, max_s=60.0, rand=lambda: 1.0)
        assert decision.retry and decision.delay_s == 2.0


async def test_a_permanent_failure_fails_at_once_without_a_retry(wstore: EventStore) -> None:
    run_id = await submit(wstore, "permanent")
    await burst(wstore)
    events = await wstore.read_run(run_id)
    assert types(events) == ["run.queued", "run.started", "run.failed"]
    error = events[-1].payload["error"]
    assert error["type"] == "PermanentFailure" and error["retriable"] is False
    assert "the prompt is invalid" in error["message"] and "Traceback" in error["stack"]


async def test_a_configuration_error_fails_the_run_at_once_saying_what_to_set(wstore: EventStore) -> None:
    """It fails the same way on every attempt: retrying only delayed the answer by the backoffs."""
    run_id = await submit(wstore, "unconfigured")
    await asyncio.wait_for(burst(wstore), 20)
    events = await wstore.read_run(run_id)
    assert types(events) == ["run.queued", "run.started", "run.failed"]
    error = events[-1].payload["error"]
    assert error["type"] == "ConfigurationError" and error["retriable"] is False
    assert error["message"].startswith("unknown LLM provider 'no-such-provider'; use one of")


async def test_on_error_can_classify_an_error_as_not_retriable(wstore: EventStore) -> None:
    run_id = await submit(wstore, "classified")
    await burst(wstore)
    events = await wstore.read_run(run_id)
    assert types(events) == ["run.queued", "run.started", "run.failed"]
    assert events[-1].payload["error"]["details"] == {"hint": "fix the tool"}
    assert ("on_error", run_id) in agents.HOOKS_CALLED


async def test_retries_stop_at_max_attempts_with_run_failed_and_a_dead_letter(wstore: EventStore) -> None:
    run_id = await submit(wstore, "flaky", max_attempts=2, params={"succeed_on": 99})
    await burst(wstore)
    events = await wstore.read_run(run_id)
    assert types(events).count("run.started") == 2
    assert events[-1].type == "run.failed"
    partition = wstore.keys.run_partition(run_id)
    dead = await wstore.redis.xrange(wstore.keys.dead(partition))
    assert [f[b"r"].decode() for _, f in dead] == [run_id]


async def test_twenty_runs_of_one_conversation_run_strictly_in_submit_order(wstore: EventStore) -> None:
    conv = await wstore.create_conversation("user:1")
    run_ids = [
        await submit(wstore, "sleeper", conversation_id=conv, params={"sleep_s": 0.01}) for _ in range(20)
    ]
    await burst(wstore, concurrency=10)
    spans = []
    for run_id in run_ids:
        events = await wstore.read_run(run_id)
        assert events[-1].type == "run.succeeded"
        spans.append((events[1].ts_ms, events[-1].ts_ms, events[-1].seq))
    for (_, end, _), (start, _, _) in itertools.pairwise(spans):
        assert start >= end  # each started after the previous one ended


async def test_interrupt_policy_cancels_the_active_run_and_runs_the_new_one(wstore: EventStore) -> None:
    conv = await wstore.create_conversation("user:1")
    async with running_worker(wstore):
        first = await submit(wstore, "sleeper", conversation_id=conv, params={"sleep_s": 60})
        await asyncio.wait_for(agents.started(first).wait(), 10)
        second = await submit(wstore, "echo", conversation_id=conv, policy="interrupt")
        assert (await wait_terminal(wstore, first)).status is RunStatus.CANCELLED
        assert (await wait_terminal(wstore, second)).status is RunStatus.SUCCEEDED


async def test_a_scheduled_run_starts_no_earlier_than_its_time(wstore: EventStore) -> None:
    run_at = now_ms() + 500
    run_id = await submit(wstore, "echo", run_at_ms=run_at)
    await burst(wstore)
    started = next(e for e in await wstore.read_run(run_id) if e.type == "run.started")
    assert run_at <= started.ts_ms < run_at + 1000


async def test_an_idle_worker_does_not_poll_the_delayed_runs(wstore: EventStore) -> None:
    """It scanned every partition's delayed zset ten times a second; now only at start (and on
    each subscription to the due channel), then when something is due or every promote_idle_s."""
    async with running_worker(wstore, promote_interval_s=0.1) as worker:
        await asyncio.sleep(0.3)
        at_start = worker.promote_scans
        await asyncio.sleep(1.5)
        assert worker.promote_scans == at_start <= 2


@pytest.mark.parametrize("how", ["scheduled", "retried"])
async def test_a_delayed_run_starts_when_due_though_the_idle_worker_looks_rarely(
    wstore: EventStore, how: str
) -> None:
    """The due channel wakes the promoter for a run due before anything it knew of: on time,
    though the worker would look by itself only a minute later. A retry it schedules itself
    reaches its promoter the same way (any worker's would)."""
    async with running_worker(wstore, promote_idle_s=60.0) as worker:
        await asyncio.sleep(0.3)
        scans = worker.promote_scans
        if how == "scheduled":
            due = now_ms() + 700
            run_id = await submit(wstore, "echo", run_at_ms=due)
        else:  # attempt 1 asks for a retry in 0.7 s
            run_id = await submit(wstore, "retry-later", params={"delay_s": 0.7})
            retrying = await wait_for_event(wstore, run_id, "run.retrying")
            due = retrying.ts_ms + 700
        assert (await wait_terminal(wstore, run_id, timeout_s=10)).status is RunStatus.SUCCEEDED
        started = [e for e in await wstore.read_run(run_id) if e.type == "run.started"][-1]
        assert due <= started.ts_ms < due + 1000  # a scan a minute later would be far off
        assert worker.promote_scans <= scans + 2  # the wake-up's scan, not a poll


async def test_a_worker_serves_only_its_agent_keys_and_leaves_other_jobs_queued(wstore: EventStore) -> None:
    mine = [await submit(wstore, "echo") for _ in range(5)]
    theirs = [await submit(wstore, "other") for _ in range(5)]
    async with running_worker(wstore, agent_keys=["echo"]):
        for run_id in mine:
            assert (await wait_terminal(wstore, run_id)).status is RunStatus.SUCCEEDED
    for run_id in theirs:
        assert (await wstore.run_state(run_id)).status is RunStatus.QUEUED  # type: ignore[union-attr]
    await burst(wstore, agent_keys=["other"])
    for run_id in theirs:
        assert (await wstore.run_state(run_id)).status is RunStatus.SUCCEEDED  # type: ignore[union-attr]


async def test_an_attempt_that_was_taken_over_is_fenced_out_and_writes_nothing_more(
    wstore: EventStore,
) -> None:
    run_id = await submit(wstore, "ticker", params={"ticks": 400, "every_s": 0.02})
    async with running_worker(wstore) as worker:
        await wait_for_event(wstore, run_id, "tick")
        job = (await wstore.redis.hget(wstore.keys.run_state(run_id), "job")).decode()
        takeover = await wstore.begin_attempt(run_id, job, "thief", "ticker")  # what a reclaim does
        assert isinstance(takeover, Claim) and takeover.attempt == 2
        await wait_until(lambda: run_id not in worker.attempts, 5, "the old attempt stopped")
    events = await wstore.read_run(run_id)
    after = [e for e in events if e.seq > takeover.seq]
    assert all(e.attempt == 2 for e in after), [(e.type, e.attempt) for e in after]
    assert (await wstore.run_state(run_id)).status is RunStatus.RUNNING  # type: ignore[union-attr]


async def test_a_claim_in_flight_when_the_worker_stops_hands_its_jobs_back_for_another_worker(
    redis_client: Any, worker_settings: Any
) -> None:
    from tests.conftest import delete_prefix

    long_lease = worker_settings.with_overrides(LEASE_TTL_SECONDS=60.0)  # no reclaim by expiry here
    store = EventStore(redis_client, long_lease, pipeline_scripts=True)
    try:
        run_id = await submit(store, "echo")
        claimed = asyncio.Event()
        original = store.claim_jobs

        async def slow_reply(*args: Any, **kw: Any) -> Any:
            jobs = await original(*args, **kw)
            if jobs:
                claimed.set()
                await asyncio.sleep(0.3)  # the worker is told to stop while this reply is on its way
            return jobs

        store.claim_jobs = slow_reply  # type: ignore[method-assign]
        async with running_worker(store, agent_keys=["echo"]):
            await asyncio.wait_for(claimed.wait(), 10)
        assert (await store.run_state(run_id)).status is RunStatus.RUNNING  # type: ignore[union-attr]
        store.claim_jobs = original  # type: ignore[method-assign]
        await burst(store, agent_keys=["echo"])  # takes it at once: handed back, not left to the lease
        events = await store.read_run(run_id)
        assert types(events).count("run.started") == 2 and events[-1].type == "run.succeeded"
        stats = store.keys.stats(store.keys.run_partition(run_id))
        assert await store.redis.hget(stats, "reclaims") is None  # given back, not reclaimed
    finally:
        await delete_prefix(redis_client, long_lease.KEY_PREFIX)


async def test_stop_with_grace_lets_running_attempts_finish(wstore: EventStore) -> None:
    run_id = await submit(wstore, "sleeper", params={"sleep_s": 0.3})
    worker = Worker(wstore, agents.registry(), handle_signals=False, block_ms=100, grace_s=10)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(agents.started(run_id).wait(), 10)
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert (await wstore.run_state(run_id)).status is RunStatus.SUCCEEDED  # type: ignore[union-attr]


async def test_stop_past_the_grace_hands_the_run_back_and_another_worker_finishes_it(
    wstore: EventStore,
) -> None:
    run_id = await submit(wstore, "sleeper", params={"sleep_s": 1.0})
    worker = Worker(wstore, agents.registry(), handle_signals=False, block_ms=100, grace_s=0.05)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(agents.started(run_id).wait(), 10)
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert (await wstore.run_state(run_id)).status is RunStatus.RUNNING  # type: ignore[union-attr]
    handed_back = time.monotonic()
    async with running_worker(wstore):
        state = await wait_terminal(wstore, run_id)
    assert state.status is RunStatus.SUCCEEDED and state.attempt == 2
    assert time.monotonic() - handed_back < 5  # reclaimed at once, not after a full lease


async def test_an_attempt_handed_back_at_shutdown_spends_none_of_the_runs_attempts(
    wstore: EventStore,
) -> None:
    """Deploys are no failure of the run: one attempt allowed, handed back twice, still runs."""
    run_id = await submit(wstore, "sleeper", params={"sleep_s": 1.0}, max_attempts=1)
    for _ in range(2):
        worker = Worker(wstore, agents.registry(), handle_signals=False, block_ms=100, grace_s=0.05)
        task = asyncio.create_task(worker.run())
        await wait_until(lambda w=worker: run_id in w.attempts, 10, "the attempt began")
        worker.stop()
        await asyncio.wait_for(task, 10)
        assert (await wstore.run_state(run_id)).status is RunStatus.RUNNING  # type: ignore[union-attr]
    async with running_worker(wstore):
        state = await wait_terminal(wstore, run_id)
    assert state.status is RunStatus.SUCCEEDED and state.attempt == 3
    stats = wstore.keys.stats(wstore.keys.run_partition(run_id))
    assert await wstore.redis.hget(stats, "reclaims") is None  # nor did it count as a reclaim


async def test_jobs_begun_by_a_claim_whose_reply_was_lost_are_taken_up_at_once(
    redis_client: Any, worker_settings: Any
) -> None:
    """Not after the lease, as a reclaim that would spend an attempt: one allowed, it runs once."""
    from tests.conftest import delete_prefix

    long_lease = worker_settings.with_overrides(LEASE_TTL_SECONDS=60.0)
    store = EventStore(redis_client, long_lease, pipeline_scripts=True)
    original = store.claim_jobs
    lost: list[int] = []

    async def reply_lost(*args: Any, **kw: Any) -> Any:
        claimed = await original(*args, **kw)  # Redis began them...
        if claimed and not lost:
            lost.append(len(claimed))
            raise ConnectionError("connection reset")  # ...and the reply never came back
        return claimed

    store.claim_jobs = reply_lost  # type: ignore[method-assign]
    try:
        run_ids = [await submit(store, "echo", max_attempts=1) for _ in range(3)]
        async with running_worker(store, agent_keys=["echo"]):
            states = [await wait_terminal(store, run_id, timeout_s=10) for run_id in run_ids]
        assert lost, "no claim reply was lost"
        assert [(s.status, s.attempt) for s in states] == [(RunStatus.SUCCEEDED, 1)] * 3
        for run_id in run_ids:
            assert types(await store.read_run(run_id)).count("run.started") == 1
    finally:
        await delete_prefix(redis_client, long_lease.KEY_PREFIX)


async def test_an_attempt_handed_back_leaves_the_run_its_retries(wstore: EventStore) -> None:
    """Two attempts allowed; the first handed back at a deploy: a failure after it still retries."""
    run_id = await submit(wstore, "sleeper", params={"sleep_s": 1.0}, max_attempts=2)
    worker = Worker(wstore, agents.registry(), handle_signals=False, block_ms=100, grace_s=0.05)
    task = asyncio.create_task(worker.run())
    await wait_until(lambda: run_id in worker.attempts, 10, "the attempt began")
    worker.stop()
    await asyncio.wait_for(task, 10)
    claim = await wstore.begin_attempt(run_id, await job_of(wstore, run_id), "w2", "sleeper")
    assert isinstance(claim, Claim) and claim.attempt == 2
    outcome = await wstore.schedule_retry(
        run_id, claim.attempt, 0, {"error": {"type": "Boom", "message": "x"}}
    )
    assert isinstance(outcome, RetryOutcome) and outcome.retrying, outcome  # attempt 2 of 2; one spent


async def test_a_begin_whose_reply_is_lost_is_sent_again_and_begins_one_attempt(
    wstore: EventStore,
) -> None:
    original = wstore.begin_attempt
    lost: list[str] = []

    async def reply_lost(*args: Any, **kw: Any) -> Any:
        begun = await original(*args, **kw)  # Redis ran it...
        if not lost:
            lost.append(args[0])
            raise ConnectionError("connection reset")  # ...and the reply never came back
        return begun

    wstore.begin_attempt = reply_lost  # type: ignore[method-assign]
    async with running_worker(wstore, agent_keys=["echo"]) as worker:
        # idle: the job comes through the blocking read, then begin_attempt
        await wait_until(lambda: worker.reader.found_nothing, 10, "the worker idles")
        run_id = await submit(wstore, "echo", max_attempts=1)
        state = await wait_terminal(wstore, run_id)
    assert lost == [run_id], "the begin was not retried through a lost reply"
    assert state.status is RunStatus.SUCCEEDED and state.attempt == 1, worker.worker_id
    assert types(await wstore.read_run(run_id)).count("run.started") == 1


async def test_an_expired_job_behind_many_live_ones_is_reclaimed_with_one_free_slot(
    redis_client: Any, worker_settings: Any
) -> None:
    """XAUTOCLAIM looks at 10 x COUNT pending entries a call: the reclaim goes on from where it
    stopped instead of looking at the same first ten live jobs again and again."""
    from tests.conftest import delete_prefix

    long_lease = worker_settings.with_overrides(LEASE_TTL_SECONDS=60.0)  # the live jobs stay live
    store = EventStore(redis_client, long_lease)
    parts = long_lease.PARTITIONS
    try:
        keys = [k for k in (f"k{i}" for i in range(2000)) if idempotency_partition("user:1", k, parts) == 0]
        run_ids = [await submit(store, "echo", idempotency_key=key) for key in keys[:31]]
        await store.ensure_groups(["echo"])
        queue = store.keys.queue(0, "echo")
        [(_, entries)] = await redis_client.xreadgroup(WORKERS_GROUP, "gone", {queue: ">"}, count=100)
        assert len(entries) == 31
        expired = entries[-1][0]  # the last in the pending list, behind 30 live jobs
        await redis_client.xclaim(queue, WORKERS_GROUP, "gone", 0, [expired], idle=600_000, justid=True)
        async with running_worker(store, agent_keys=["echo"], concurrency=1, reclaim_interval_s=0.05):
            state = await wait_terminal(store, run_ids[-1], timeout_s=5)
        assert state.status is RunStatus.SUCCEEDED
        assert [s.status for s in [await store.run_state(r) for r in run_ids[:-1]]] == [RunStatus.QUEUED] * 30
    finally:
        await delete_prefix(redis_client, long_lease.KEY_PREFIX)


async def test_a_redis_out_of_memory_pauses_the_claims_and_the_worker_serves_on(wstore: EventStore) -> None:
    import redis.exceptions

    original = wstore.claim_jobs
    refusals = [redis.exceptions.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'")]

    async def refusing(*args: Any, **kw: Any) -> Any:
        if refusals:
            raise refusals.pop()
        return await original(*args, **kw)

    wstore.claim_jobs = refusing  # type: ignore[method-assign]
    run_id = await submit(wstore, "echo")
    async with running_worker(wstore, agent_keys=["echo"]):
        state = await wait_terminal(wstore, run_id)
    assert state.status is RunStatus.SUCCEEDED and not refusals


async def test_a_job_whose_run_already_ended_is_acked_and_dropped(wstore: EventStore) -> None:
    run_id = await submit(wstore, "echo")
    await burst(wstore)
    partition = wstore.keys.run_partition(run_id)
    assert await wstore.redis.xlen(wstore.keys.queue(partition, "echo")) == 0
    events = await wstore.read_run(run_id)
    assert types(events).count(EventType.RUN_STARTED) == 1


async def test_a_missed_cancel_broadcast_is_caught_by_the_heartbeat(wstore: EventStore) -> None:
    async with running_worker(wstore) as worker:
        worker.cancel_listener._on_cancel = lambda run_id: None  # the pub/sub message is lost
        run_id = await submit(wstore, "sleeper", params={"sleep_s": 60})
        await asyncio.wait_for(agents.started(run_id).wait(), 10)
        requested = time.monotonic()
        await wstore.cancel(run_id)
        state = await wait_terminal(wstore, run_id)
    assert state.status is RunStatus.CANCELLED
    lease_s = wstore.settings.LEASE_TTL_SECONDS
    assert agents.CANCELLED_AT[run_id] - requested < lease_s / 3 + 0.5  # within one heartbeat


async def test_a_cancel_that_lands_during_a_flush_neither_loses_nor_repeats_its_events(
    wstore: EventStore,
) -> None:
    gate, in_flight = asyncio.Event(), asyncio.Event()
    original = wstore.append_many

    async def held_at_the_gate(run_id: str, attempt: int, events: Any, **kw: Any) -> Any:
        batch = list(events)

        async def send() -> Any:
            if any(e.type == "tick" for e in batch) and not gate.is_set():
                in_flight.set()
                await gate.wait()
            return await original(run_id, attempt, batch, **kw)

        # like a pipeline already on the wire: cancelling the caller does not recall it
        return await asyncio.shield(asyncio.ensure_future(send()))

    wstore.append_many = held_at_the_gate  # type: ignore[method-assign]
    async with running_worker(wstore) as worker:
        run_id = await submit(wstore, "ticker", params={"ticks": 3, "every_s": 0.01})
        await asyncio.wait_for(in_flight.wait(), 10)
        await wstore.cancel(run_id)
        attempt = worker.attempts[run_id][1]
        await wait_until(lambda: attempt.cancel_reason is not None, 5, "the cancel reached the worker")
        gate.set()
        state = await wait_terminal(wstore, run_id)
    events = await wstore.read_run(run_id)
    ticks = [e.payload["i"] for e in events if e.type == "tick"]
    assert state.status is RunStatus.CANCELLED
    assert ticks == [0]  # written once, not lost and not repeated by the final flush


async def test_a_cancel_broadcast_while_the_attempt_is_beginning_still_cancels_it_at_once(
    redis_client: Any, worker_settings: Any
) -> None:
    from tests.conftest import delete_prefix

    long_lease = worker_settings.with_overrides(LEASE_TTL_SECONDS=60.0)  # no heartbeat to fall back on
    store = EventStore(redis_client, long_lease, pipeline_scripts=True)
    try:
        async with running_worker(store) as worker:
            original = store.begin_attempt

            async def begin_then_cancel(run_id: str, *args: Any, **kw: Any) -> Any:
                claim = await original(run_id, *args, **kw)
                await store.cancel(run_id)  # lands while this worker awaits begin_attempt's reply
                await wait_until(lambda: run_id in worker._early_cancels, 5, "the broadcast arrived")
                return claim

            store.begin_attempt = begin_then_cancel  # type: ignore[method-assign]
            # idle, waiting on its queues: the job comes from a read, then begin_attempt
            await wait_until(lambda: worker.reader.found_nothing and not worker._claims, 5, "worker idle")
            run_id = await submit(store, "silent", params={"sleep_s": 60})
            state = await wait_terminal(store, run_id, timeout_s=5)
        assert state.status is RunStatus.CANCELLED
    finally:
        await delete_prefix(redis_client, long_lease.KEY_PREFIX)


async def test_every_log_line_about_a_run_carries_its_run_id_attempt_agent_key_and_worker_id(
    wstore: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="agentstream.worker")
    ok = await submit(wstore, "echo")
    failing = await submit(wstore, "flaky")  # fails, retries, is dead-lettered
    worker = await burst(wstore)
    about_runs = [r for r in caplog.records if ok in r.getMessage() or failing in r.getMessage()]
    assert len(about_runs) >= 4  # started + ended for each, and the retry line
    for line in about_runs:
        assert getattr(line, "run_id", None) in (ok, failing), line.getMessage()
        assert line.agent_key in ("echo", "flaky") and line.worker_id == worker.worker_id  # type: ignore[attr-defined]
        assert isinstance(line.attempt, int)  # type: ignore[attr-defined]

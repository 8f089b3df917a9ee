"""Property: the Python fold and the Lua scripts enforce one state machine.

Random command sequences (legal and illegal) run against the store; after each one the fold
of the run's stream must equal the state Redis holds, and a command the store refuses must be
one the fold refuses too (and the other way round).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentstream.core.errors import AgentStreamError, IllegalTransition
from agentstream.core.events import Event, EventType, NewEvent
from agentstream.core.settings import Settings
from agentstream.core.state import RunState, evolve, fold
from agentstream.core.store import Claim, EventStore, SubmitRequest, redis_from_url
from tests.conftest import delete_prefix
from tests.core.storetools import begin_again, claim

TERMINALS = [EventType.RUN_SUCCEEDED, EventType.RUN_FAILED, EventType.RUN_CANCELLED, EventType.RUN_TIMED_OUT]

commands = st.lists(
    st.one_of(
        st.tuples(st.just("begin")),
        st.tuples(st.just("append"), st.integers(1, 3), st.booleans()),
        st.tuples(st.just("finish"), st.sampled_from(TERMINALS), st.booleans()),
        st.tuples(st.just("retry"), st.booleans()),
        st.tuples(st.just("promote")),
        st.tuples(st.just("cancel")),
    ),
    min_size=1,
    max_size=12,
)


def refused_by_fold(state: RunState, kind: str, attempt: int) -> bool:
    try:
        evolve(state, Event(run_id=state.run_id, seq=state.seq + 1, type=kind, attempt=attempt))
    except IllegalTransition:
        return True
    return False


async def scenario(url: str, steps: list[tuple[object, ...]]) -> None:
    prefix = f"h{uuid.uuid4().hex[:10]}"
    client = redis_from_url(url)
    store = EventStore(client, Settings(KEY_PREFIX=prefix, PARTITIONS=2, MAX_RETRIES=3))
    try:
        run_id = (await store.submit(SubmitRequest(agent_key="a", owner="user:1"))).run_id
        first_claim_done = False
        for step in steps:
            before = fold(await store.read_run(run_id))
            assert before is not None
            current = before.attempt
            refused = False
            match step:
                case ("begin",):
                    if not first_claim_done and before.status == "queued" and before.attempt == 0:
                        await claim(store, run_id)
                        first_claim_done = True
                    elif await client.hget(store.keys.run_state(run_id), "job") not in (None, b""):
                        # a worker reclaims the job (a job exists only while the run may start)
                        await begin_again(store, run_id, worker=f"w{current + 1}")
                case ("append", n, stale):
                    attempt = current - 1 if stale else current
                    expect = refused_by_fold(before, "tool.call", attempt)
                    try:
                        await store.append_many(
                            run_id,
                            attempt,
                            [NewEvent("tool.call", {"i": i}) for i in range(int(n))],  # type: ignore[call-overload]
                        )
                    except AgentStreamError:
                        refused = True
                    assert refused == expect, (step, before)
                case ("finish", kind, stale):
                    attempt = current - 1 if stale else current
                    expect = refused_by_fold(before, str(kind), attempt) or before.status != "running"
                    try:
                        await store.finish(run_id, attempt, str(kind), {})
                    except AgentStreamError:
                        refused = True
                    assert refused == expect, (step, before)
                case ("retry", stale):
                    attempt = current - 1 if stale else current
                    expect = refused_by_fold(before, EventType.RUN_RETRYING, attempt)
                    try:
                        await store.schedule_retry(run_id, attempt, 0, {"message": "x"})
                    except AgentStreamError:
                        refused = True
                    assert refused == expect, (step, before)
                case ("promote",):
                    await store.promote_due(store.keys.run_partition(run_id))
                case ("cancel",):
                    try:
                        await store.cancel(run_id)
                    except AgentStreamError:
                        refused = True
                    assert refused == before.status.is_terminal, (step, before)
            events = await store.read_run(run_id)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            folded = fold(events)
            held = await store.run_state(run_id)
            assert folded is not None and held is not None
            assert (folded.status, folded.seq, folded.attempt, folded.cancel_requested) == (
                held.status,
                held.seq,
                held.attempt,
                held.cancel_requested,
            ), step
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=commands)
def test_the_fold_and_the_lua_scripts_agree_on_every_sequence(
    redis_url: str, steps: list[tuple[object, ...]]
) -> None:
    asyncio.run(scenario(redis_url, steps))


def test_the_property_test_is_not_vacuous() -> None:
    # a begin is a Claim the first time, and fencing really refuses the stale attempt
    async def check() -> None:
        store = EventStore(redis_from_url(f"fakeredis://{uuid.uuid4().hex}"), Settings(KEY_PREFIX="v"))
        run_id = (await store.submit(SubmitRequest(agent_key="a", owner="user:1"))).run_id
        assert isinstance(await claim(store, run_id), Claim)
        assert isinstance(await begin_again(store, run_id), Claim)
        with pytest.raises(AgentStreamError):
            await store.append(run_id, 1, "tool.call", {})

    asyncio.run(check())

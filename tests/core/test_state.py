from __future__ import annotations

import pytest

from agentstream.core.errors import FencedOut, IllegalTransition, RunTerminal
from agentstream.core.events import Event, EventType
from agentstream.core.state import RunStatus, evolve, evolve_conversation, fold


def ev(seq: int, kind: str, attempt: int = 0, **payload: object) -> Event:
    return Event(run_id="r", seq=seq, type=kind, payload=payload, attempt=attempt, ts_ms=seq * 10)


def test_a_run_goes_queued_running_succeeded() -> None:
    state = fold(
        [
            ev(1, EventType.RUN_QUEUED, agent_key="a", owner="user:1", max_attempts=3),
            ev(2, EventType.RUN_STARTED, 1),
            ev(3, EventType.ASSISTANT_MESSAGE, 1, content="hi"),
            ev(4, EventType.RUN_SUCCEEDED, 1, output={"ok": True}, usage={"total_tokens": 3}),
        ]
    )
    assert state is not None
    assert (state.status, state.seq, state.attempt, state.output) == (RunStatus.SUCCEEDED, 4, 1, {"ok": True})
    assert state.usage == {"total_tokens": 3} and state.agent_key == "a" and state.max_attempts == 3


def test_a_retry_returns_to_queued_and_the_next_start_bumps_the_attempt() -> None:
    state = fold(
        [ev(1, EventType.RUN_QUEUED), ev(2, EventType.RUN_STARTED, 1), ev(3, EventType.RUN_RETRYING, 1)]
    )
    assert state is not None and state.status is RunStatus.QUEUED
    state = evolve(state, ev(4, EventType.RUN_STARTED, 2))
    assert (state.status, state.attempt) == (RunStatus.RUNNING, 2)


def test_a_reclaim_starts_a_new_attempt_of_a_running_run() -> None:
    state = fold(
        [ev(1, EventType.RUN_QUEUED), ev(2, EventType.RUN_STARTED, 1), ev(3, EventType.RUN_STARTED, 2)]
    )
    assert state is not None and state.attempt == 2


def test_an_event_of_an_old_attempt_is_fenced_out() -> None:
    state = fold(
        [ev(1, EventType.RUN_QUEUED), ev(2, EventType.RUN_STARTED, 1), ev(3, EventType.RUN_STARTED, 2)]
    )
    with pytest.raises(FencedOut, match="attempt 1, current attempt is 2"):
        evolve(state, ev(4, EventType.TOOL_CALL, 1))


def test_a_queued_run_can_be_cancelled_but_not_succeed() -> None:
    queued = fold([ev(1, EventType.RUN_QUEUED)])
    assert evolve(queued, ev(2, EventType.RUN_CANCELLED)).status is RunStatus.CANCELLED
    with pytest.raises(IllegalTransition, match="while the run is queued"):
        evolve(queued, ev(2, EventType.RUN_SUCCEEDED))


def test_a_terminal_run_refuses_every_further_event() -> None:
    done = fold([ev(1, EventType.RUN_QUEUED), ev(2, EventType.RUN_CANCELLED)])
    for kind in (EventType.RUN_STARTED, EventType.TOOL_CALL, EventType.RUN_FAILED, EventType.RUN_CANCELLED):
        with pytest.raises(RunTerminal, match="is cancelled"):
            evolve(done, ev(3, kind, 1 if kind == EventType.RUN_STARTED else 0))


def test_a_gap_in_seq_is_illegal() -> None:
    with pytest.raises(IllegalTransition, match="seq 3 does not follow seq 1"):
        evolve(fold([ev(1, EventType.RUN_QUEUED)]), ev(3, EventType.RUN_STARTED, 1))


def test_the_first_event_must_be_run_queued() -> None:
    with pytest.raises(IllegalTransition, match=r"first event must be run\.queued"):
        evolve(None, ev(1, EventType.RUN_STARTED, 1))


def test_lifecycle_events_cannot_be_smuggled_in_as_plain_events() -> None:
    running = fold([ev(1, EventType.RUN_QUEUED), ev(2, EventType.RUN_STARTED, 1)])
    with pytest.raises(IllegalTransition):
        evolve(running, ev(3, EventType.RUN_QUEUED, 1))


def test_a_conversation_is_created_updated_and_deleted() -> None:
    def cev(seq: int, kind: str, **payload: object) -> Event:
        return Event(run_id="", seq=seq, type=kind, payload=payload, conversation_id="c")

    state = evolve_conversation(None, cev(1, EventType.CONVERSATION_CREATED, owner="user:1", title="t"))
    state = evolve_conversation(state, cev(2, EventType.CONVERSATION_UPDATED, title="new"))
    assert state.title == "new" and state.owner == "user:1"
    state = evolve_conversation(state, cev(3, EventType.CONVERSATION_DELETED))
    with pytest.raises(IllegalTransition, match="deleted"):
        evolve_conversation(state, cev(4, EventType.CONVERSATION_UPDATED, title="x"))

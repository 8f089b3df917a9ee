"""An attempt whose ending cannot be written (an output or error msgpack cannot encode, or one
over MAX_EVENT_BYTES) fails its run at once with a clear error: it never crashes the job task,
which left the run running until its lease ran out and ran the agent again."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest

from agentstream.consumers import (
    AgentRuntime,
    ErrorInfo,
    PermanentFailure,
    RunContext,
    RunResult,
    RuntimeRegistry,
)
from agentstream.core.state import RunStatus
from agentstream.core.store import EventStore, SubmitRequest
from tests.consumers.helpers import burst, types

RUNS: Counter[str] = Counter()


class Unwritable(AgentRuntime):
    """Ends as ``params.ending`` says, in a way the store cannot write as it is."""

    key = "unwritable"

    async def run(self, ctx: RunContext) -> RunResult:
        RUNS[ctx.run_id] += 1
        ctx.record_usage({"prompt_tokens": 7})
        ending = ctx.params["ending"]
        if ending == "object output":
            return RunResult(final_output={"when": object()})
        if ending == "huge output":
            return RunResult(final_output={"text": "y" * (ctx.params["max_bytes"] + 1)})
        if ending == "huge error":
            raise PermanentFailure("x" * 2_000_000)
        raise ConnectionError("upstream 503")  # retriable: on_error adds what cannot be encoded

    async def on_error(self, ctx: RunContext, exc: BaseException) -> ErrorInfo | None:
        if ctx.params["ending"] == "object in a retried error":
            return ErrorInfo("Upstream", str(exc), retriable=True, details={"response": object()})
        return None


async def run_once(store: EventStore, ending: str) -> str:
    registry = RuntimeRegistry()
    registry.register(Unwritable)
    params = {"ending": ending, "max_bytes": store.settings.MAX_EVENT_BYTES}
    submitted = await store.submit(SubmitRequest("unwritable", "user:1", params=params, max_attempts=3))
    await burst(store, registry=registry)
    return submitted.run_id


@pytest.mark.parametrize(
    ("ending", "says"),
    [
        ("object output", "payload['output']['when'] (object) cannot be encoded"),
        ("huge output", "over MAX_EVENT_BYTES"),
        ("object in a retried error", "payload['error']['details']['response'] (object) cannot be encoded"),
    ],
)
async def test_an_ending_that_cannot_be_encoded_fails_the_run_at_once_and_says_why(
    wstore: EventStore, caplog: pytest.LogCaptureFixture, ending: str, says: str
) -> None:
    run_id = await run_once(wstore, ending)
    state = await wstore.run_state(run_id)
    events = await wstore.read_run(run_id)
    assert state is not None and state.status is RunStatus.FAILED
    assert types(events) == ["run.queued", "run.started", "run.failed"]
    assert RUNS[run_id] == 1  # never run again
    error = events[-1].payload["error"]
    assert error["type"] == "EventEncodingError" and error["retriable"] is False
    assert says in error["message"] and len(error["message"].encode()) <= 600
    assert events[-1].payload["usage"] == {"prompt_tokens": 7}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_huge_error_message_is_cut_like_its_stack_and_the_run_fails_once(
    wstore: EventStore,
) -> None:
    run_id = await run_once(wstore, "huge error")
    events = await wstore.read_run(run_id)
    assert types(events) == ["run.queued", "run.started", "run.failed"]
    assert RUNS[run_id] == 1
    error: dict[str, Any] = events[-1].payload["error"]
    assert error["type"] == "PermanentFailure"
    assert error["message"].startswith("x" * 8000)
    assert error["message"].endswith("(1992000 more characters cut)")

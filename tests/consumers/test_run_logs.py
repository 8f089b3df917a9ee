"""Structured logs: every worker line about a run names the run, its attempt, agent key and worker;
no message body, output or parameter reaches a log line."""

from __future__ import annotations

import logging

import pytest

from agentstream.core.logfmt import JsonFormatter
from agentstream.core.store import EventStore, SubmitRequest
from tests.consumers.helpers import burst

BODY = "my card number is 4111 1111 1111 1111"
PARAM = "sk-live-do-not-log-me"


async def test_every_worker_line_about_a_run_carries_its_fields_and_no_body_is_logged(
    wstore: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    runs = {}
    for agent_key, extra in [
        ("echo", {}),
        ("permanent", {}),
        ("retry-later", {"params": {"delay_s": 0, "token": PARAM}}),
        ("sleeper", {"params": {"sleep_s": 30}, "timeout_s": 0.2}),
    ]:
        request = SubmitRequest(agent_key, "user:1", messages=[{"role": "user", "content": BODY}], **extra)  # type: ignore[arg-type]
        runs[(await wstore.submit(request)).run_id] = agent_key
    with caplog.at_level(logging.INFO, logger="agentstream"):
        worker = await burst(wstore)

    about_runs = [r for r in caplog.records if any(run_id in r.getMessage() for run_id in runs)]
    assert {run_id for run_id in runs if any(run_id in r.getMessage() for r in about_runs)} == set(runs)
    for record in about_runs:
        run_id = next(run_id for run_id in runs if run_id in record.getMessage())
        fields = (
            getattr(record, "run_id", None),
            getattr(record, "agent_key", None),
            getattr(record, "worker_id", None),
        )
        assert fields == (run_id, runs[run_id], worker.worker_id), record.getMessage()
        if " started" in record.getMessage() or " retrying" in record.getMessage():
            assert isinstance(getattr(record, "attempt", None), int), record.getMessage()

    lines = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    # "4111 1111", not "4111": a run id (random hex) can hold "4111"
    assert BODY not in lines and "4111 1111" not in lines and PARAM not in lines and "echo: " not in lines

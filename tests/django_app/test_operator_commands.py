"""``agentstatus`` and ``deadletters`` (``agentstream status`` / ``agentstream dead``) on real state."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.store import Claim, SubmitRequest
from tests.django_app.conftest import run, store_for

pytestmark = pytest.mark.django_db


def make_dead_run(values: dict[str, Any]) -> str:
    async def go() -> str:
        store = store_for(values)
        try:
            run_id = (
                await store.submit(
                    SubmitRequest(
                        agent_key="a",
                        owner="user:1",
                        messages=[{"role": "user", "content": "x"}],
                        max_attempts=1,
                    )
                )
            ).run_id
            await store.ensure_groups(["a"])
            queue = store.keys.queue(store.keys.run_partition(run_id), "a")
            reply = await store.redis.xreadgroup(WORKERS_GROUP, "w", {queue: ">"}, count=10)
            job = next(j for _, entries in reply for j, f in entries if f[b"r"].decode() == run_id)
            claim = await store.begin_attempt(run_id, job.decode(), "w", "a")
            assert isinstance(claim, Claim)
            await store.schedule_retry(run_id, claim.attempt, 0, {"type": "Boom", "message": "always"})
            return run_id
        finally:
            await store.redis.aclose()

    return run(go)


def command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_agentstatus_shows_queues_dead_letters_and_runs(agentstream: dict[str, Any]) -> None:
    make_dead_run(agentstream)
    text = command("agentstatus")
    assert "queue" in text and "a " in text
    assert "dead letters: 1" in text
    assert "knowledge search: " in text


def test_deadletters_lists_replays_and_purges(agentstream: dict[str, Any]) -> None:
    first = make_dead_run(agentstream)
    make_dead_run(agentstream)
    listing = command("deadletters", "list")
    assert first in listing and "retries exhausted" in listing
    replayed = command("deadletters", "retry", first)
    assert replayed.startswith(f"replayed {first} as new run ")
    assert first not in command("deadletters", "list")
    assert command("deadletters", "purge").strip() == "purged 1 dead letters"
    assert command("deadletters", "list").strip() == "no dead letters"


def test_deadletters_retry_without_an_id_says_what_to_pass(agentstream: dict[str, Any]) -> None:
    with pytest.raises(CommandError, match="retry needs the run id"):
        command("deadletters", "retry")
    with pytest.raises(CommandError, match="agentstream dead list"):
        command("deadletters", "retry", "00000000-0000-4000-8000-000000000000")

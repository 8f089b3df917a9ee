"""``agentstatus`` and ``deadletters`` (``agentstream status`` / ``agentstream dead``) on real state."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.store import Claim, SubmitRequest
from agentstream.django_app.management.operator_errors import redact_url
from tests.django_app.conftest import run, store_for
from tests.services import free_port

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


@pytest.mark.parametrize(
    "args",
    [
        ("verify_projections", "--source", "log"),
        ("replay_projections", "--source", "log"),
        ("runprojector", "--lag"),
    ],
)
def test_commands_reading_the_logs_say_in_one_line_that_redis_is_unreachable(
    settings: Any, args: tuple[str, ...]
) -> None:
    settings.AGENTSTREAM = {"REDIS_URL": f"redis://ops:s3cret@127.0.0.1:{free_port()}/0", "PARTITIONS": 4}
    with pytest.raises(CommandError) as raised:
        command(*args)
    message = str(raised.value)
    assert message.startswith("cannot reach Redis at redis://***@127.0.0.1:"), message
    assert message.endswith("Connection refused; is it running? set REDIS_URL") and "s3cret" not in message


def test_a_url_in_a_message_shows_no_credentials() -> None:
    assert redact_url("redis+cluster://u:p@h1:1,h2:2?password=p") == "redis+cluster://***@h1:1,h2:2"
    assert redact_url("rediss://h:6380/1") == "rediss://h:6380/1"

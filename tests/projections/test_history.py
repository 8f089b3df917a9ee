"""Conversation.get_message_history / get_last_assistant_message, from the read-models."""

from __future__ import annotations

from typing import Any

import pytest

from agentstream.core.events import EventType
from agentstream.core.ids import user_owner
from agentstream.core.store import EventStore, SubmitRequest
from tests.projections.conftest import AGENT, claim, in_thread, projector_for

pytestmark = pytest.mark.django_db(databases=["default", "embedded"], transaction=True)
OWNER = user_owner(7)


async def one_run(store: EventStore, conv: str, text: str, *, answer: str | None, final: bool = True) -> str:
    run = await store.submit(
        SubmitRequest(
            agent_key=AGENT, owner=OWNER, conversation_id=conv, messages=[{"role": "user", "content": text}]
        )
    )
    c = await claim(store, run.run_id)
    if answer is None:
        error = {"type": "RuntimeError", "message": "boom", "retriable": False}
        await store.finish(run.run_id, c.attempt, EventType.RUN_FAILED, {"error": error})
        return run.run_id
    await store.append(
        run.run_id, c.attempt, EventType.ASSISTANT_MESSAGE, {"role": "assistant", "content": answer}
    )
    payload: dict[str, Any] = {"output": {"text": answer}}
    if final:
        payload["final_messages"] = [{"role": "assistant", "content": answer}]
    await store.finish(run.run_id, c.attempt, EventType.RUN_SUCCEEDED, payload)
    return run.run_id


async def test_history_lists_each_runs_messages_in_order_and_keeps_a_message_sent_twice(
    store: EventStore, database: str
) -> None:
    from agentstream.django_app.models import Conversation

    conv = await store.create_conversation(OWNER, agent_key=AGENT)
    await one_run(store, conv, "hi", answer="hello")
    await one_run(store, conv, "hi", answer="hello again", final=False)  # answer only in the events
    await one_run(store, conv, "explode", answer=None)
    await projector_for(store, database).run(burst=True)

    def read() -> tuple[Any, Any, Any]:
        c = Conversation.objects.using(database).get(id=conv)
        return (
            c.get_message_history(),
            c.get_message_history(include_failed_runs=True),
            c.get_last_assistant_message(),
        )

    history, with_failed, last = await in_thread(read)

    assert history == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello again"},
    ]
    assert with_failed == [*history, {"role": "user", "content": "explode"}]
    assert last == {"role": "assistant", "content": "hello again"}


async def test_an_empty_conversation_has_no_history_and_no_last_assistant_message(
    store: EventStore, database: str
) -> None:
    from agentstream.django_app.models import Conversation

    conv = await store.create_conversation(OWNER, agent_key=AGENT)
    await projector_for(store, database).run(burst=True)

    def read() -> tuple[Any, Any]:
        c = Conversation.objects.using(database).get(id=conv)
        return c.get_message_history(), c.get_last_assistant_message()

    assert await in_thread(read) == ([], None)

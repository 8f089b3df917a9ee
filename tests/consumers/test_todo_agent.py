"""The ``todo`` example through a real worker: its memory and tasks outlive each run, per user."""

from __future__ import annotations

from agentstream.consumers import RuntimeRegistry
from agentstream.consumers.examples.todo_agent import TodoAgent
from agentstream.consumers.stores import InMemoryStoreBackend
from agentstream.core.ids import user_owner
from agentstream.core.store import EventStore, SubmitRequest
from tests.consumers.helpers import burst


async def say(store: EventStore, stores: InMemoryStoreBackend, owner: str, text: str) -> str:
    registry = RuntimeRegistry()
    registry.register(TodoAgent())
    submitted = await store.submit(
        SubmitRequest(agent_key="todo", owner=owner, messages=[{"role": "user", "content": text}])
    )
    await burst(store, registry=registry, stores=stores)
    state = await store.run_state(submitted.run_id)
    assert state is not None and state.status == "succeeded", state
    events = await store.read_run(submitted.run_id)
    return str(next(e.payload["content"] for e in events if e.type == "assistant.message"))


async def test_the_todo_agent_remembers_its_user_and_tasks_across_runs(wstore: EventStore) -> None:
    stores = InMemoryStoreBackend()
    ada, bob = user_owner(1), user_owner(2)
    assert await say(wstore, stores, ada, "my name is Ada") == "Nice to meet you, Ada."
    assert await say(wstore, stores, ada, "add write tests") == "Ada, added task 1: write tests."
    assert await say(wstore, stores, ada, "add! ship it after 1") == "Ada, added task 2: ship it."
    listing = await say(wstore, stores, ada, "list")
    assert listing == "Ada, open tasks:\n2. ship it (not started)\n1. write tests (not started, can start)"
    assert await say(wstore, stores, ada, "done 1") == "Ada, task 1 is complete."
    assert "2. ship it (not started, can start)" in await say(wstore, stores, ada, "list")
    refused = await say(wstore, stores, ada, "add orphan after 9")
    assert refused.startswith("Sorry: task '3' depends on unknown")
    assert await say(wstore, stores, bob, "list") == "Nothing to do."  # another user's stores

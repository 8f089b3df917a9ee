"""Example agents through a real worker, on fakeredis and real Redis: events checked in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from agentstream.consumers import RuntimeRegistry
from agentstream.consumers.examples.simple_chat import SimpleChatAgent
from agentstream.consumers.examples.tool_agent import ToolAgent, demo_responder
from agentstream.consumers.llm import FakeLLMClient, get_llm_client
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, Redis, SubmitRequest
from tests.conftest import delete_prefix
from tests.consumers.fake_openai_server import FakeOpenAIServer
from tests.consumers.helpers import burst, running_worker, types, wait_for_event, wait_terminal


def registry_with(*agents: object) -> RuntimeRegistry:
    registry = RuntimeRegistry()
    for agent in agents:
        registry.register(agent)
    return registry


async def test_a_tool_agent_run_through_a_worker_writes_its_events_in_order(wstore: EventStore) -> None:
    llm = FakeLLMClient(responder=demo_responder)
    submitted = await wstore.submit(
        SubmitRequest(
            agent_key="tool_agent", owner="user:1", messages=[{"role": "user", "content": "What is 6 * 7?"}]
        )
    )
    await burst(wstore, registry=registry_with(ToolAgent(llm)))

    events = await wstore.read_run(submitted.run_id)
    kinds = [kind for kind in types(events) if kind != "assistant.delta"]
    assert kinds == [
        "run.queued",
        "run.started",
        "tool.call",
        "tool.result",
        "assistant.message",
        "run.succeeded",
    ]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    by_type = {e.type: e.payload for e in events}
    assert by_type["tool.call"] == {
        "id": "call_1",
        "name": "calculator",
        "arguments": {"expression": "6 * 7"},
    }
    assert by_type["tool.result"] == {"id": "call_1", "name": "calculator", "result": 42}
    deltas = "".join(e.payload["delta"] for e in events if e.type == "assistant.delta")
    assert deltas == by_type["assistant.message"]["content"] == "The answer is 42."
    # deltas come after the tool result, before the message they spell
    positions = types(events)
    assert (
        positions.index("tool.result")
        < positions.index("assistant.delta")
        < positions.index("assistant.message")
    )
    succeeded = by_type["run.succeeded"]
    assert succeeded["output"] == {"response": "The answer is 42.", "steps": 2, "stop_reason": "answered"}
    assert [m["role"] for m in succeeded["final_messages"]] == ["user", "assistant", "tool", "assistant"]
    usage = succeeded["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    state = await wstore.run_state(submitted.run_id)
    assert state is not None and state.status == "succeeded"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def long_lease_store(redis_client: Redis, key_prefix: str) -> AsyncIterator[EventStore]:
    """A lease far longer than the test: only the cancel may stop the attempt (no reclaim)."""
    settings = Settings(KEY_PREFIX=key_prefix, PARTITIONS=4, LEASE_TTL_SECONDS=60)
    yield EventStore(redis_client, settings, pipeline_scripts=True)
    await delete_prefix(redis_client, key_prefix)


async def test_cancelling_a_streaming_run_through_the_worker_closes_the_http_stream_at_once(
    long_lease_store: EventStore, server: FakeOpenAIServer
) -> None:
    wstore = long_lease_store
    llm = get_llm_client("openai", "endless", settings=Settings(OPENAI_BASE_URL=server.base_url))
    await llm.generate([{"role": "user", "content": "warm up"}], model="warm-up")  # the SDK's lazy imports
    registry = registry_with(SimpleChatAgent(llm))
    submitted = await wstore.submit(
        SubmitRequest(
            agent_key="simple_chat", owner="user:1", messages=[{"role": "user", "content": "go on"}]
        )
    )
    async with running_worker(wstore, registry=registry):
        await wait_for_event(wstore, submitted.run_id, "assistant.delta")
        requested_at = time.monotonic()
        await wstore.cancel(submitted.run_id, reason="user pressed stop")
        assert await asyncio.to_thread(server.disconnected.wait, 5), "the server never saw the client go away"
        took_ms = (server.disconnected_at[0] - requested_at) * 1000
        state = await wait_terminal(wstore, submitted.run_id)
    await llm.aclose()
    print(f"cancel request -> provider saw the disconnect: {took_ms:.1f} ms")
    assert len(server.requests) == 2  # the warm-up and one streaming attempt
    assert state.status == "cancelled"
    assert took_ms < 250, f"{took_ms:.1f} ms"  # the budget is 100 ms; generous for a loaded 2-core box
    events = await wstore.read_run(submitted.run_id)
    cancelled = events[-1]
    assert cancelled.type == "run.cancelled"
    assert cancelled.payload.get("partial_output")  # the tokens streamed before the stop


async def test_the_simple_chat_agent_streams_through_a_worker(wstore: EventStore) -> None:
    submitted = await wstore.submit(
        SubmitRequest(
            agent_key="simple_chat", owner="user:1", messages=[{"role": "user", "content": "hi there"}]
        )
    )
    await burst(wstore, registry=registry_with(SimpleChatAgent(FakeLLMClient(["Hello, friend."]))))
    events = await wstore.read_run(submitted.run_id)
    assert types(events) == [
        "run.queued",
        "run.started",
        *["assistant.delta"] * 2,
        "assistant.message",
        "run.succeeded",
    ]
    assert events[-1].payload["output"]["response"] == "Hello, friend."

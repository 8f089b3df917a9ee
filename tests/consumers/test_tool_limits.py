"""The tool loop at its limits: a result too large (or unencodable) for its ``tool.result`` event
is an error the model reads, never a crashed (and retried) run; sync tools that hang keep only
threads of their own, never the event loop's (``getaddrinfo``), and when all of those are held
past their timeouts a call is refused at once."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from agentstream.consumers.context import RunContext
from agentstream.consumers.llm.fake import FakeLLMClient, FakeReply, FakeToolCall
from agentstream.consumers.tools import SyncToolThreads, Tool, ToolRegistry, run_tool_loop
from agentstream.core.codec import DEFAULT_MAX_EVENT_BYTES, encode_payload
from agentstream.core.events import Event
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, Redis, SubmitRequest
from tests.core.storetools import claim

OVER = DEFAULT_MAX_EVENT_BYTES + 1000


def page() -> str:
    """Fetch a page larger than an event may be."""
    return "x" * OVER


async def loop_through_a_run_context(store: EventStore, tools: list[Tool]) -> tuple[list[Event], str]:
    """Run the tool loop on a real ``RunContext`` (which encodes each event as it is emitted);
    the events written and what the model was told of the one call."""
    submitted = await store.submit(SubmitRequest("a", "user:1"))
    ctx = RunContext(store, await claim(store, submitted.run_id), flush_interval_s=60)
    llm = FakeLLMClient([FakeReply(tool_calls=(FakeToolCall(tools[0].name, id="c1"),)), "done"])
    result = await run_tool_loop(ctx, llm, tools, [{"role": "user", "content": "fetch"}])
    assert result.stop_reason == "answered" and result.content == "done"
    await ctx.flush()
    told = next(m for m in result.messages if m["role"] == "tool")
    return await store.read_run(submitted.run_id), str(told["content"])


def tool_result(events: list[Event]) -> dict[str, object]:
    (event,) = [e for e in events if e.type == "tool.result"]
    return dict(event.payload)


async def test_a_result_over_max_event_bytes_is_an_error_the_model_reads_and_the_event_records(
    wstore: EventStore,
) -> None:
    events, told = await loop_through_a_run_context(wstore, [Tool.from_function(page)])
    size = len(encode_payload("tool.result", {"id": "c1", "name": "page", "result": page()}, 2 * OVER))
    error = (
        f"the tool's result is {size} bytes, over MAX_EVENT_BYTES={DEFAULT_MAX_EVENT_BYTES}: "
        "return less, or store it and return a reference"
    )
    assert tool_result(events) == {"id": "c1", "name": "page", "error": error}
    assert json.loads(told) == {"error": error}  # the model reads what the event says


async def test_a_tool_result_is_encoded_once_on_its_way_to_the_stream(
    wstore: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """execute_call sizes the result by encoding its event; the emit reuses those bytes."""
    from agentstream.core import codec

    packed_results: list[object] = []
    real_packb = codec.msgpack.packb

    def counting_packb(value: object, **kwargs: object) -> bytes:
        if isinstance(value, dict) and "result" in value:
            packed_results.append(value["result"])
        return real_packb(value, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(codec.msgpack, "packb", counting_packb)

    def measure() -> list[int]:
        """A small result."""
        return [1, 2, 3]

    events, told = await loop_through_a_run_context(wstore, [Tool.from_function(measure)])
    assert json.loads(told) == [1, 2, 3]
    assert tool_result(events) == {"id": "c1", "name": "measure", "result": [1, 2, 3]}
    assert packed_results == [[1, 2, 3]]


async def test_a_context_allowing_less_than_the_settings_still_gets_an_answer_not_a_crash(
    wstore: EventStore, redis_client: Redis, worker_settings: Settings
) -> None:
    small = EventStore(
        redis_client, worker_settings.with_overrides(MAX_EVENT_BYTES=4096), pipeline_scripts=True
    )

    def medium() -> str:
        """Fits the default MAX_EVENT_BYTES, not this store's."""
        return "y" * 5000

    events, told = await loop_through_a_run_context(small, [Tool.from_function(medium)])
    error = tool_result(events)["error"]
    assert isinstance(error, str) and "over MAX_EVENT_BYTES=4096" in error and "return less" in error
    assert json.loads(told) == {"error": error}


async def test_arguments_too_large_to_record_still_reach_the_tool(
    redis_client: Redis, worker_settings: Settings
) -> None:
    small = EventStore(
        redis_client, worker_settings.with_overrides(MAX_EVENT_BYTES=4096), pipeline_scripts=True
    )

    def measure(text: str) -> int:
        """Counts the characters of the text."""
        return len(text)

    submitted = await small.submit(SubmitRequest("a", "user:1"))
    ctx = RunContext(small, await claim(small, submitted.run_id), flush_interval_s=60)
    call = FakeToolCall("measure", {"text": "w" * 5000}, id="c1")
    llm = FakeLLMClient([FakeReply(tool_calls=(call,)), "done"])
    result = await run_tool_loop(ctx, llm, [Tool.from_function(measure)], [{"role": "user", "content": "go"}])
    await ctx.flush()
    events = await small.read_run(submitted.run_id)
    (recorded,) = [e.payload for e in events if e.type == "tool.call"]
    assert str(recorded["arguments"]).startswith("(not recorded: tool.call: payload is")
    assert tool_result(events) == {"id": "c1", "name": "measure", "result": 5000}
    assert result.content == "done"


async def test_an_unencodable_result_or_an_oversized_error_is_answered_within_the_limit() -> None:
    def huge_number() -> int:
        """An integer msgpack cannot hold."""
        return 2**70

    def loud() -> None:
        """Fails with a very long message."""
        raise RuntimeError("z" * OVER)

    registry = ToolRegistry([huge_number, loud])
    number = await registry.execute_call("huge_number", {}, call_id="c1")
    assert number.error is not None and number.error.startswith("the tool's result cannot be recorded")
    failed = await registry.execute_call("loud", {}, call_id="c2")
    assert failed.error is not None and failed.error.startswith("RuntimeError: zzz")
    assert failed.error.endswith(f"(cut: the error was {len('RuntimeError: ') + OVER} characters)")
    for answer in (number, failed):
        encode_payload("tool.result", answer.event_payload(), DEFAULT_MAX_EVENT_BYTES)  # writable


# -- sync tools' threads ------------------------------------------------------------------------


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of the test: every hung tool returns."""
    event = threading.Event()
    yield event
    event.set()


async def test_hung_sync_tools_leave_the_loops_default_executor_and_getaddrinfo_free(
    release: threading.Event,
) -> None:
    loop = asyncio.get_running_loop()
    started = threading.Event()

    def hang() -> str:
        """Hangs."""
        started.set()
        release.wait(30)
        return "late"

    # as on a small machine: one thread in the loop's default executor, which getaddrinfo uses
    loop.set_default_executor(ThreadPoolExecutor(1))
    registry = ToolRegistry([Tool.from_function(hang, timeout_s=0.05)])
    result = await registry.execute_call("hang", {})
    assert result.error == "the tool did not finish within 0.05 s" and started.is_set()
    # the hung tool holds a thread, but not one of the loop's (a timeout only as a backstop)
    assert await asyncio.wait_for(loop.getaddrinfo("127.0.0.1", 80), 5)
    assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 5) == "free"


async def test_when_every_sync_tool_thread_is_held_past_its_timeout_a_call_is_refused_at_once(
    release: threading.Event,
) -> None:
    threads = SyncToolThreads(2)
    request = contextvars.ContextVar("request", default="")

    def hang() -> str:
        """Hangs."""
        release.wait(30)
        return "late"

    def quick() -> list[str]:
        """Where it ran, and what it saw of the caller's context."""
        return [threading.current_thread().name, request.get()]

    registry = ToolRegistry([Tool.from_function(hang, timeout_s=0.05), quick], sync_threads=threads)
    request.set("r-1")
    hung = await asyncio.gather(*(registry.execute_call("hang", {}) for _ in range(2)))
    assert [r.error for r in hung] == ["the tool did not finish within 0.05 s"] * 2
    assert threads.abandoned == 2

    refused = await asyncio.wait_for(registry.execute_call("quick", {}), 5)  # at once, not queued
    assert refused.error == (
        "2 sync tools are still running past their timeout, holding every thread for sync tools "
        "(TOOL_THREADS=2); this call was not run: try again later, or go on without this tool"
    )

    release.set()
    await asyncio.to_thread(threads.shutdown)  # waits for the hung tools to return
    assert threads.abandoned == 0
    answered = await registry.execute_call("quick", {})
    assert answered.ok and isinstance(answered.result, list)
    name, seen = answered.result
    assert name.startswith("agentstream-tool") and seen == "r-1"
    await asyncio.to_thread(threads.shutdown)


async def test_a_sync_call_that_timed_out_waiting_for_a_thread_never_runs_later(
    release: threading.Event,
) -> None:
    threads = SyncToolThreads(1)
    busy, ran = threading.Event(), threading.Event()

    def slow() -> str:
        """Holds the only thread, within its timeout."""
        busy.set()
        release.wait(30)
        return "done"

    def write() -> str:
        """A side effect."""
        ran.set()
        return "written"

    registry = ToolRegistry(
        [Tool.from_function(slow, timeout_s=30), Tool.from_function(write, timeout_s=0.05)],
        sync_threads=threads,
    )
    holding = asyncio.create_task(registry.execute_call("slow", {}))
    await asyncio.to_thread(busy.wait, 5)
    waited = await registry.execute_call("write", {})
    assert waited.error == "the tool did not finish within 0.05 s"
    assert threads.abandoned == 0  # it never started: nothing holds a thread for it
    release.set()
    assert (await holding).result == "done"
    await asyncio.to_thread(threads.shutdown)
    assert not ran.is_set()

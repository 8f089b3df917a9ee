"""The SSE pieces on their own: framing and the client cursor (pure), and the hub on fakeredis
and real Redis (fan-out, wake-up on subscribe, a slow client dropped without delaying others)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson
import pytest

from agentstream.core.events import Event, EventType, NewEvent, Visibility
from agentstream.core.ids import idempotency_partition, user_owner
from agentstream.core.settings import Settings
from agentstream.core.store import Claim, EventStore
from agentstream.django_app.sse import views
from agentstream.django_app.sse.buffers import AsyncBuffer
from agentstream.django_app.sse.cursor import Cursor
from agentstream.django_app.sse.framing import Frame, VisibilityFilter, encode_sse, event_frame, retry_frame
from agentstream.django_app.sse.hub import Hub, hub_for_loop
from tests.conftest import WITH_CLUSTER, backend_url
from tests.django_app.helpers import finish, running, standard_events


@pytest.fixture(params=WITH_CLUSTER)
def redis_url(request: pytest.FixtureRequest) -> str:
    """This suite runs on Redis Cluster too."""
    return backend_url(request)


def ev(seq: int, kind: str = "assistant.message", vis: Visibility = Visibility.USER) -> Event:
    return Event(run_id="r1", seq=seq, type=kind, payload={"i": seq}, ts_ms=1_700_000_000_000, visibility=vis)


def test_encode_sse_writes_id_event_and_one_line_of_json_data() -> None:
    frame = encode_sse(7, "assistant.message", {"text": "two\nlines"})
    assert frame == b'id: 7\nevent: assistant.message\ndata: {"text":"two\\nlines"}\n\n'


def test_encode_sse_splits_text_data_and_strips_newlines_from_fields() -> None:
    assert encode_sse(None, "a\nb", "x\ny") == b"event: a b\ndata: x\ndata: y\n\n"
    assert retry_frame(3000) == b"retry: 3000\n\n"


def test_event_frame_keeps_the_seeds_data_shape() -> None:
    frame = event_frame(ev(3, "tool.call", Visibility.DEBUG))
    lines = frame.decode().splitlines()
    assert lines[:2] == ["id: 3", "event: tool.call"]
    data = orjson.loads(lines[2].removeprefix("data: "))
    assert set(data) == {"run_id", "seq", "type", "payload", "ts", "visibility_level", "ui_visible"}
    assert (data["visibility_level"], data["ui_visible"]) == ("debug", False)
    assert data["ts"].startswith("2023-11-14T22:13:20")


def test_event_frames_carry_what_the_codec_takes_that_json_does_not() -> None:
    """Int keys (msgpack keeps them) and nesting past JSON's 255 levels (msgpack takes 1,024)
    made the frame raise, so the hub could not send the event to anyone."""
    deep: Any = 0
    for _ in range(300):
        deep = [deep]
    keyed = Event("r", 4, "progress", {"scores": {1: 0.5}}, 1_700_000_000_000)
    assert orjson.loads(event_frame(keyed).splitlines()[2].removeprefix(b"data: "))["payload"] == {
        "scores": {"1": 0.5}
    }
    frame = event_frame(Event("r", 5, "progress", {"deep": deep}, 1_700_000_000_000))
    data = orjson.loads(frame.splitlines()[2].removeprefix(b"data: "))
    assert data["seq"] == 5 and data["payload"]["not_json"].startswith("cannot be sent as JSON")


def test_visibility_filter_default_debug_all_and_terminal_always() -> None:
    internal, debug, user = (
        ev(1, "state.checkpoint", Visibility.INTERNAL),
        ev(2, "tool.call", Visibility.DEBUG),
        ev(3),
    )
    terminal = ev(4, "run.succeeded", Visibility.INTERNAL)  # reconfigured as internal: still sent
    seen = {
        name: [e.seq for e in (internal, debug, user, terminal) if f.wants(e)]
        for name, f in {
            "default": VisibilityFilter(),
            "debug": VisibilityFilter(include_debug=True),
            "all": VisibilityFilter(include_all=True),
        }.items()
    }
    assert seen == {"default": [3, 4], "debug": [2, 3, 4], "all": [1, 2, 3, 4]}


def test_cursor_drops_duplicates_reports_gaps_and_stops_after_terminal() -> None:
    cursor = Cursor(2)
    step = cursor.feed([Frame.of(ev(s)) for s in (1, 2, 3, 5, 6)])
    assert step.out == event_frame(ev(3))
    assert step.missing == (3, 5) and [f.event.seq for f in step.rest] == [5, 6]
    assert cursor.feed([Frame.of(ev(4))]).out == event_frame(ev(4))
    cursor.feed(step.rest)
    assert cursor.last_seq == 6
    done = cursor.feed([Frame.of(ev(7, "run.failed")), Frame.of(ev(8))])
    assert cursor.done and done.out == event_frame(ev(7, "run.failed"))


def test_cursor_filters_but_still_advances_past_hidden_events() -> None:
    cursor = Cursor(0, VisibilityFilter())
    step = cursor.feed([Frame.of(ev(1, "run.queued", Visibility.INTERNAL)), Frame.of(ev(2))])
    assert step.out == event_frame(ev(2)) and cursor.last_seq == 2


async def wait_for(condition: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_hub_fans_one_read_out_to_every_client_of_a_run(store: EventStore, redis_url: str) -> None:
    hub = Hub(store.settings, url=redis_url, block_ms=2000)
    claim = await running(store, user_owner(1))
    buffers = [AsyncBuffer(100) for _ in range(3)]
    try:
        for buffer in buffers:
            await hub.subscribe(claim.run_id, claim.seq, buffer)
        await store.append_many(claim.run_id, claim.attempt, standard_events(4))
        await finish(store, claim)
        for buffer in buffers:
            seqs: list[int] = []
            while not seqs or seqs[-1] < claim.seq + 5:
                frames = await buffer.take(5)
                assert frames is not None
                seqs += [f.event.seq for f in frames]
            assert seqs == list(range(claim.seq + 1, claim.seq + 6))
    finally:
        await hub.close()


async def test_subscribing_wakes_the_blocking_read_at_once(store: EventStore, redis_url: str) -> None:
    hub = Hub(store.settings, url=redis_url, block_ms=30_000)  # a read that would block 30 s
    first, second = await running(store, user_owner(1)), await running(store, user_owner(1))
    a, b = AsyncBuffer(100), AsyncBuffer(100)
    try:
        await hub.subscribe(first.run_id, first.seq, a)
        await wait_for(lambda: hub._reading)
        await hub.subscribe(second.run_id, second.seq, b)  # must not wait for the 30 s read
        started = time.monotonic()
        await store.append(second.run_id, second.attempt, EventType.ASSISTANT_MESSAGE, {"content": "hi"})
        frames = await b.take(5)
        assert frames is not None and frames[0].event.type == "assistant.message"
        assert time.monotonic() - started < 2
    finally:
        await hub.close()


async def test_a_slow_client_overflows_is_dropped_and_never_delays_the_others(
    store: EventStore, redis_url: str
) -> None:
    hub = Hub(store.settings, url=redis_url, block_ms=2000)
    claim = await running(store, user_owner(1))
    slow, fast = AsyncBuffer(5), AsyncBuffer(1000)
    try:
        await hub.subscribe(claim.run_id, claim.seq, slow)
        await hub.subscribe(claim.run_id, claim.seq, fast)
        for i in range(20):  # the slow client never reads
            await store.append_many(
                claim.run_id, claim.attempt, [NewEvent("assistant.delta", {"delta": str(i)})]
            )
        got: list[int] = []
        while len(got) < 20:
            frames = await fast.take(5)
            assert frames is not None, "the fast client was held up"
            got += [f.event.seq for f in frames]
        assert got == list(range(claim.seq + 1, claim.seq + 21))
        assert slow.closed and hub.dropped == 1
        assert hub.clients == 1  # the slow one was freed
    finally:
        await hub.close()


async def test_unsubscribing_the_last_client_of_a_run_stops_reading_it(
    store: EventStore, redis_url: str
) -> None:
    hub = Hub(store.settings, url=redis_url, block_ms=2000)
    claim = await running(store, user_owner(1))
    buffer = AsyncBuffer(10)
    try:
        await hub.subscribe(claim.run_id, claim.seq, buffer)
        assert (hub.clients, hub.runs) == (1, 1)
        hub.unsubscribe(claim.run_id, buffer)
        assert (hub.clients, hub.runs) == (0, 0)
    finally:
        await hub.close()


async def test_a_client_gone_while_subscribing_leaves_no_subscription(
    store: EventStore, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(REDIS_URL=redis_url, KEY_PREFIX=store.settings.KEY_PREFIX, PARTITIONS=4)
    hub = hub_for_loop(settings)  # the hub the view uses
    watched = await running(store, user_owner(1))
    joining, later = await running_beside(store, watched), await running_beside(store, watched)
    waking = asyncio.Event()

    async def slow_wake(shard: Any) -> None:  # the wake-up XADD, its reply not yet in
        waking.set()
        await asyncio.Event().wait()

    async def serve(body: Any) -> None:
        async for _ in body:
            pass

    try:
        await hub.subscribe(watched.run_id, watched.seq, AsyncBuffer(100))
        await wait_for(lambda: hub._reading)  # so a new subscriber wakes the read
        monkeypatch.setattr(hub, "_wake", slow_wake)
        stream = asyncio.create_task(
            serve(views._async_body(settings, joining.run_id, Cursor(joining.seq), None))
        )
        await asyncio.wait_for(waking.wait(), 10)
        stream.cancel()  # what Django does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await stream
        assert (hub.clients, hub.runs) == (1, 1)
        monkeypatch.undo()
        # that wake was never sent: the next client of the same read sends its own
        buffer = AsyncBuffer(100)
        await hub.subscribe(later.run_id, later.seq, buffer)
        await store.append(later.run_id, later.attempt, EventType.ASSISTANT_MESSAGE, {"content": "hi"})
        frames = await buffer.take(5)  # the read in flight blocks 10 s
        assert frames is not None and frames[0].event.type == "assistant.message"
    finally:
        monkeypatch.undo()
        await hub.close()


async def running_beside(store: EventStore, other: Claim) -> Claim:
    """A running run in the partition of ``other``: on a cluster, the same blocking read."""
    owner, partition = user_owner(1), store.keys.run_partition(other.run_id)
    while True:  # a submit with an idempotency key lands in the key's partition
        key = uuid.uuid4().hex
        if idempotency_partition(owner, key, store.settings.PARTITIONS) == partition:
            return await running(store, owner, idempotency_key=key)


async def test_an_undecodable_last_entry_is_logged_once_and_read_past(
    store: EventStore, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub(store.settings, url=redis_url, block_ms=2000)
    claim = await running(store, user_owner(1))
    key = store.keys.run_stream(claim.run_id)
    [(_, good)] = await store.redis.xrange(key, min=f"0-{claim.seq}")
    buffer = AsyncBuffer(100)
    try:
        with caplog.at_level(logging.ERROR, logger="agentstream.sse"):
            await hub.subscribe(claim.run_id, claim.seq, buffer)
            await store.redis.xadd(key, {"garbage": "1"}, id=f"0-{claim.seq + 1}")
            await wait_for(lambda: "undecodable" in caplog.text)
            # left at the end of the stream, it was read again and logged thousands of times a second
            await store.redis.xadd(key, {**good, b"s": str(claim.seq + 2)}, id=f"0-{claim.seq + 2}")
            frames = await buffer.take(5)
        assert frames is not None and [f.event.seq for f in frames] == [claim.seq + 2]
        assert sum("undecodable" in r.getMessage() for r in caplog.records) == 1
    finally:
        await hub.close()


@pytest.mark.parametrize("limit", [1, 3])
def test_async_buffer_overflow_closes_it(limit: int) -> None:
    buffer = AsyncBuffer(limit)
    assert buffer.deliver([Frame.of(ev(1))])
    assert buffer.deliver([Frame.of(ev(s)) for s in range(2, 2 + limit)]) is False
    assert buffer.closed

"""The SSE endpoint through a real server (uvicorn, ASGI) and a real client (httpx-sse), on
fakeredis and real Redis: order, resume at every position, visibility, keepalive, retry, close
after terminal, disconnect frees the client and never cancels the run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from agentstream.core.events import NewEvent
from agentstream.core.ids import anonymous_owner
from agentstream.core.store import EventStore
from agentstream.django_app.api.authentication import issue_token
from tests.django_app.conftest import LiveServer, store_for
from tests.django_app.helpers import complete_run, finish, running, standard_events

TIMEOUT = httpx.Timeout(20.0)


pytestmark = pytest.mark.usefixtures("sees_all_events")  # internal events, as anonymous callers


class Caller:
    def __init__(self) -> None:
        session, self.token = issue_token()
        self.owner = anonymous_owner(session.id)

    def headers(self, last_event_id: int | None = None) -> dict[str, str]:
        headers = {"X-Anonymous-Token": self.token}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        return headers


async def collect(
    server: LiveServer,
    caller: Caller,
    run_id: str,
    *,
    query: str = "include_all=true",
    last: int | None = None,
) -> list[tuple[int, str, dict[str, Any]]]:
    """Every event until the server closes the stream: (id, event, data)."""
    url = f"{server.url}/api/agents/runs/{run_id}/events/?{query}"
    async with (
        httpx.AsyncClient(timeout=TIMEOUT) as client,
        aconnect_sse(client, "GET", url, headers=caller.headers(last)) as source,
    ):
        assert source.response.status_code == 200, await source.response.aread()
        return [(int(s.id), s.event, orjson.loads(s.data)) async for s in source.aiter_sse() if s.data]


@pytest.fixture
async def store(agentstream: dict[str, Any]) -> Any:
    store = store_for(agentstream)
    yield store
    await store.redis.aclose()


async def test_stream_replays_then_tails_every_event_in_order_and_closes_after_terminal(
    live_server_asgi: LiveServer, store: EventStore
) -> None:
    caller = Caller()
    claim = await running(store, caller.owner)
    await store.append_many(claim.run_id, claim.attempt, standard_events(3))
    reader = asyncio.create_task(collect(live_server_asgi, caller, claim.run_id))
    await wait_clients(live_server_asgi, 1)  # replayed, now tailing through the hub
    for i in range(3):
        await store.append_many(claim.run_id, claim.attempt, [NewEvent("assistant.delta", {"delta": str(i)})])
    last = await finish(store, claim)
    events = await asyncio.wait_for(reader, 20)
    assert [e[0] for e in events] == list(range(1, last + 1))
    assert events[-1][1] == "run.succeeded"
    first = events[0][2]
    assert set(first) == {"run_id", "seq", "type", "payload", "ts", "visibility_level", "ui_visible"}
    assert (first["run_id"], first["type"]) == (claim.run_id, "run.queued")
    await wait_clients(live_server_asgi, 0)


async def test_resume_with_last_event_id_at_every_position_has_no_gap_and_no_duplicate(
    live_server_asgi: LiveServer, store: EventStore
) -> None:
    caller = Caller()
    run_id = await complete_run(store, caller.owner, standard_events(8))
    total = (await store.run_state(run_id)).seq  # type: ignore[union-attr]
    for position in range(total):
        events = await collect(live_server_asgi, caller, run_id, last=position)
        assert [e[0] for e in events] == list(range(position + 1, total + 1)), position
    # from_seq names the first event wanted, as django-agent-runtime's did (Last-Event-ID the last had)
    by_query = await collect(live_server_asgi, caller, run_id, query="include_all=true&from_seq=4")
    assert [e[0] for e in by_query] == list(range(4, total + 1))
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:  # after the terminal event: 204, stop
        response = await client.get(
            f"{live_server_asgi.url}/api/agents/runs/{run_id}/events/", headers=caller.headers(total)
        )
        assert response.status_code == 204


async def test_a_resume_id_ahead_of_a_live_run_is_400_and_the_runs_streams_go_on(
    live_server_asgi: LiveServer, store: EventStore
) -> None:
    caller = Caller()
    claim = await running(store, caller.owner)
    url = f"{live_server_asgi.url}/api/agents/runs/{claim.run_id}/events/"
    ahead = [(caller.headers(claim.seq + 1000), ""), (caller.headers(), f"?from_seq={claim.seq + 2}")]
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        for headers, query in ahead:
            async with client.stream("GET", url + query, headers=headers) as response:
                assert response.status_code == 400
                error = orjson.loads(await response.aread())["error"]
                assert error["code"] == "resume_ahead" and f"seq {claim.seq}" in error["message"]
    # an ahead id once left the run's shared hub cursor past the stream: no client saw another event
    reader = asyncio.create_task(collect(live_server_asgi, caller, claim.run_id))
    await wait_clients(live_server_asgi, 1)
    await store.append_many(claim.run_id, claim.attempt, [NewEvent("assistant.delta", {"d": 1})])
    last = await finish(store, claim)
    assert [e[0] for e in await asyncio.wait_for(reader, 20)] == list(range(1, last + 1))


async def test_a_dropped_connection_resumes_exactly_while_the_run_goes_on(
    live_server_asgi: LiveServer, store: EventStore
) -> None:
    caller = Caller()
    claim = await running(store, caller.owner)
    url = f"{live_server_asgi.url}/api/agents/runs/{claim.run_id}/events/?include_all=true"
    seen: list[int] = []
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        for drop in range(1, 6):  # read one more event each time, then cut the connection
            async with aconnect_sse(
                client, "GET", url, headers=caller.headers(seen[-1] if seen else None)
            ) as source:
                await store.append_many(
                    claim.run_id, claim.attempt, [NewEvent("assistant.delta", {"d": drop})]
                )
                async for sse in source.aiter_sse():
                    if not sse.data:  # the retry: frame
                        continue
                    seen.append(int(sse.id))
                    if sse.event == "assistant.delta" and orjson.loads(sse.data)["payload"]["d"] == drop:
                        break
            # appended while nobody listens
            await store.append_many(claim.run_id, claim.attempt, [NewEvent("tool.call", {"gap": drop})])
    last = await finish(store, claim)
    seen += [e[0] for e in await collect(live_server_asgi, caller, claim.run_id, last=seen[-1])]
    assert seen == list(range(1, last + 1))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {"assistant.delta", "assistant.message", "run.succeeded"}),
        (
            "include_debug=true",
            {"assistant.delta", "assistant.message", "tool.call", "tool.result", "run.succeeded"},
        ),
        (
            "include_all=true",
            {"run.queued", "run.started", "assistant.delta", "assistant.message", "tool.call", "tool.result"}
            | {"state.checkpoint", "run.succeeded"},
        ),
    ],
)
async def test_visibility_filters_default_user_debug_and_all(
    live_server_asgi: LiveServer, store: EventStore, query: str, expected: set[str]
) -> None:
    caller = Caller()
    run_id = await complete_run(store, caller.owner, standard_events(10))
    events = await collect(live_server_asgi, caller, run_id, query=query)
    assert {e[1] for e in events} == expected
    assert [e[0] for e in events] == sorted(e[0] for e in events)


async def test_debug_mode_setting_shows_debug_events(
    settings: Any, agentstream: dict[str, Any], store: EventStore
) -> None:
    settings.AGENTSTREAM = {**agentstream, "DEBUG_MODE": True}
    caller = Caller()
    run_id = await complete_run(store, caller.owner, standard_events(3))
    with LiveServer() as server:
        events = await collect(server, caller, run_id, query="")
    assert "tool.call" in {e[1] for e in events} and "run.queued" not in {e[1] for e in events}


async def test_retry_is_sent_first_and_a_keepalive_comment_while_idle(
    settings: Any, agentstream: dict[str, Any], store: EventStore
) -> None:
    settings.AGENTSTREAM = {**agentstream, "SSE_KEEPALIVE_SECONDS": 0.2, "SSE_RETRY_MS": 1234}
    caller = Caller()
    claim = await running(store, caller.owner)
    lines: list[str] = []
    with LiveServer() as server:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            url = f"{server.url}/api/agents/runs/{claim.run_id}/events/"
            async with client.stream("GET", url, headers=caller.headers()) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                assert "access-control-allow-origin" not in response.headers
                async for line in response.aiter_lines():
                    lines.append(line)
                    if lines.count(": keepalive") >= 2:
                        break
    assert lines[0] == "retry: 1234"
    assert lines.count(": keepalive") == 2


async def test_a_keepalive_is_sent_while_only_events_the_client_does_not_see_arrive(
    settings: Any, agentstream: dict[str, Any], store: EventStore
) -> None:
    settings.AGENTSTREAM = {**agentstream, "SSE_KEEPALIVE_SECONDS": 0.5}
    caller = Caller()
    claim = await running(store, caller.owner)

    async def tool_loop() -> None:  # debug events, hidden by the default filter, faster than keepalives
        while True:
            await store.append_many(
                claim.run_id, claim.attempt, [NewEvent("tool.call", {"id": "t", "name": "clock"})]
            )
            await asyncio.sleep(0.05)

    keepalives = 0
    with LiveServer() as server:
        producer = asyncio.create_task(tool_loop())
        try:
            async with (
                httpx.AsyncClient(timeout=TIMEOUT) as client,
                client.stream(
                    "GET", f"{server.url}/api/agents/runs/{claim.run_id}/events/", headers=caller.headers()
                ) as response,
                asyncio.timeout(5),  # a backstop: two keepalives take about a second
            ):
                async for line in response.aiter_lines():
                    assert not line.startswith("id:"), line
                    if line == ": keepalive":
                        keepalives += 1
                    if keepalives == 2:
                        break
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
    assert keepalives == 2


async def test_disconnect_frees_the_client_at_once_and_never_cancels_the_run(
    live_server_asgi: LiveServer, store: EventStore
) -> None:
    caller = Caller()
    claim = await running(store, caller.owner)
    url = f"{live_server_asgi.url}/api/agents/runs/{claim.run_id}/events/"
    async with (
        httpx.AsyncClient(timeout=TIMEOUT) as client,
        aconnect_sse(client, "GET", url, headers=caller.headers()) as source,
    ):
        assert source.response.status_code == 200
        await wait_clients(live_server_asgi, 1)
    started = time.monotonic()
    await wait_clients(live_server_asgi, 0)
    assert time.monotonic() - started < 2
    state = await store.run_state(claim.run_id)
    assert state is not None and state.status == "running" and not state.cancel_requested


async def test_many_clients_of_one_run_all_get_every_event(
    live_server_asgi: LiveServer, store: EventStore
) -> None:
    caller = Caller()
    claim = await running(store, caller.owner)
    readers = [asyncio.create_task(collect(live_server_asgi, caller, claim.run_id)) for _ in range(20)]
    await wait_clients(live_server_asgi, 20)
    await store.append_many(claim.run_id, claim.attempt, standard_events(10))
    last = await finish(store, claim)
    for events in await asyncio.wait_for(asyncio.gather(*readers), 30):
        assert [e[0] for e in events] == list(range(1, last + 1))


async def test_held_streams_do_not_pin_a_thread_each(live_server_asgi: LiveServer, store: EventStore) -> None:
    import threading

    caller = Caller()
    claim = await running(store, caller.owner)
    warm = await complete_run(store, caller.owner)
    await collect(live_server_asgi, caller, warm)  # warm up: the store thread, pools and hub exist
    before = threading.active_count()
    readers = [asyncio.create_task(collect(live_server_asgi, caller, claim.run_id)) for _ in range(30)]
    await wait_clients(live_server_asgi, 30)
    held = threading.active_count()
    await finish(store, claim)
    await asyncio.wait_for(asyncio.gather(*readers), 30)
    assert held - before < 10, f"{held - before} more threads for 30 held streams"


async def test_the_stream_of_someone_elses_run_is_404(
    live_server_asgi: LiveServer, store: EventStore
) -> None:
    owner, other = Caller(), Caller()
    claim = await running(store, owner.owner)
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        url = f"{live_server_asgi.url}/api/agents/runs/{claim.run_id}/events/"
        response = await client.get(url, headers=other.headers())
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        response = await client.get(url)
        assert response.status_code == 401


async def wait_clients(server: LiveServer, n: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        hub = server.hub()
        clients = hub.clients if hub is not None else 0
        if clients == n:
            return
        assert time.monotonic() < deadline, f"the hub has {clients} clients, expected {n}"
        await asyncio.sleep(0.01)

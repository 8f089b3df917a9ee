"""The sync SSE body under WSGI (Django's test client), and the replay from the event archive
when the run's stream has expired."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from typing import Any

import pytest

from agentstream.core.events import NewEvent
from agentstream.core.ids import anonymous_owner
from agentstream.core.store import EventStore
from agentstream.django_app.api import backend
from agentstream.django_app.models import Event, Run
from tests.django_app.conftest import anon_client, wait_until
from tests.django_app.helpers import finish, running, with_store

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("sees_all_events")]


def frames(chunks: list[bytes]) -> list[dict[str, str]]:
    out = []
    for block in b"".join(chunks).decode().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":")
        )
        if "id" in fields:
            out.append(fields)
    return out


def test_the_sync_view_replays_and_tails_a_live_run_under_wsgi(agentstream: dict[str, Any]) -> None:
    client, session_id = anon_client()
    claim = with_store(agentstream, lambda store: running(store, anonymous_owner(session_id)))
    response = client.get(f"/api/agents/runs/{claim.run_id}/events/?include_all=true")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    body = iter(response.streaming_content)
    chunks = [next(body)]  # retry:
    assert chunks[0].startswith(b"retry: ")
    chunks.append(next(body))  # the replay: queued, started

    def produce() -> None:  # once the view tails through the hub, the run goes on
        wait_until(lambda: backend.api_backend().hub.clients == 1, what="the WSGI client subscribed")

        async def go_on(store: EventStore) -> None:
            await store.append_many(claim.run_id, claim.attempt, [NewEvent("assistant.delta", {"d": 1})])
            await finish(store, claim)

        with_store(agentstream, go_on)

    producer = threading.Thread(target=produce)
    producer.start()
    chunks += list(body)  # ends after the terminal event
    producer.join(10)
    got = frames(chunks)
    assert [int(f["id"]) for f in got] == [1, 2, 3, 4]
    assert got[-1]["event"] == "run.succeeded"
    wait_until(lambda: backend.api_backend().hub.clients == 0, what="the WSGI client freed")


def test_the_sync_view_sends_a_keepalive_while_only_hidden_events_arrive(
    settings: Any, agentstream: dict[str, Any]
) -> None:
    settings.AGENTSTREAM = {**agentstream, "SSE_KEEPALIVE_SECONDS": 0.5}
    client, session_id = anon_client()
    stop = threading.Event()
    claim = with_store(agentstream, lambda store: running(store, anonymous_owner(session_id)))

    def tool_loop() -> None:  # debug events, hidden by the default filter, faster than keepalives
        async def loop(store: EventStore) -> None:
            while not stop.is_set():
                await store.append_many(claim.run_id, claim.attempt, [NewEvent("tool.call", {"id": "t"})])
                await asyncio.sleep(0.05)

        with_store(agentstream, loop)

    response = client.get(f"/api/agents/runs/{claim.run_id}/events/")
    producer = threading.Thread(target=tool_loop)
    producer.start()
    keepalives, deadline = 0, time.monotonic() + 5  # a backstop: two keepalives take about a second
    try:
        for chunk in response.streaming_content:
            assert b"id: " not in chunk
            keepalives += chunk.count(b": keepalive")
            if keepalives >= 2 or time.monotonic() > deadline:
                break
    finally:
        stop.set()
        producer.join(10)
        response.close()
    assert keepalives >= 2


def test_an_expired_stream_is_replayed_from_the_event_archive(agentstream: dict[str, Any]) -> None:
    client, session_id = anon_client()
    run_id = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    Run.objects.create(
        id=run_id, owner=anonymous_owner(session_id), agent_key="echo", status="succeeded", last_seq=3
    )
    for seq, kind, vis in [
        (1, "run.queued", "internal"),
        (2, "assistant.message", "user"),
        (3, "run.succeeded", "user"),
    ]:
        Event.objects.create(run_id=run_id, seq=seq, type=kind, payload={"seq": seq}, ts=now, visibility=vis)
    response = client.get(f"/api/agents/runs/{run_id}/events/")
    got = frames(list(response.streaming_content))
    assert [(int(f["id"]), f["event"]) for f in got] == [(2, "assistant.message"), (3, "run.succeeded")]
    resumed = client.get(f"/api/agents/runs/{run_id}/events/?include_all=1", HTTP_LAST_EVENT_ID="1")
    assert [int(f["id"]) for f in frames(list(resumed.streaming_content))] == [2, 3]
    assert client.get(f"/api/agents/runs/{run_id}/events/", HTTP_LAST_EVENT_ID="3").status_code == 204
    other, _ = anon_client()
    assert other.get(f"/api/agents/runs/{run_id}/events/").status_code == 404


def test_an_expired_stream_of_a_run_that_never_ended_tells_the_browser_to_stop_reconnecting(
    agentstream: dict[str, Any],
) -> None:
    client, session_id = anon_client()
    run_id = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    Run.objects.create(
        id=run_id, owner=anonymous_owner(session_id), agent_key="echo", status="running", last_seq=2
    )
    for seq, kind in [(1, "run.queued"), (2, "run.started")]:
        Event.objects.create(run_id=run_id, seq=seq, type=kind, payload={}, ts=now, visibility="internal")
    url = f"/api/agents/runs/{run_id}/events/?include_all=1"
    assert [int(f["id"]) for f in frames(list(client.get(url).streaming_content))] == [1, 2]
    # no terminal event, but with its Redis state gone the run can append nothing more: EventSource
    # reconnects once, and 204 stops it (it reconnected forever to an empty stream)
    assert client.get(url, HTTP_LAST_EVENT_ID="2").status_code == 204


def test_a_bad_last_event_id_is_400(agentstream: dict[str, Any]) -> None:
    client, _ = anon_client()
    response = client.get(f"/api/agents/runs/{uuid.uuid4()}/events/?from_seq=-3")
    assert response.status_code == 400
    assert "from_seq" in response.json()["error"]["message"]

"""runs/: submit, idempotency, validation, read-your-writes, list, cancel, append-only — on
fakeredis and real Redis, with PostgreSQL (SQLite locally when it is absent)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from agentstream.core.ids import anonymous_owner
from tests.django_app.conftest import anon_client, run, store_for
from tests.django_app.helpers import announce_sync, complete_run, project, running, with_store, work

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = "/api/agents/runs/"


def post(client: Client, body: Any, path: str = RUNS, **extra: Any) -> Any:
    return client.post(path, json.dumps(body), content_type="application/json", **extra)


def hello(**more: Any) -> dict[str, Any]:
    return {"agent_key": "echo", "messages": [{"role": "user", "content": "hello"}], **more}


def test_post_run_is_201_with_location_and_get_answers_from_redis_before_projection(
    agentstream: dict[str, Any],
) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    created = post(client, hello(params={"temperature": 0}, metadata={"k": "v"}))
    assert created.status_code == 201, created.content
    run_id = created.json()["id"]
    assert created["Location"].endswith(f"{RUNS}{run_id}/")
    assert created.json()["status"] == "queued"
    # nothing projected yet: the row does not exist, the answer comes from the run's Redis state
    got = client.get(f"{RUNS}{run_id}/")
    assert got.status_code == 200
    body = got.json()
    assert body["status"] == "queued"
    assert body["input"] == {"messages": [{"role": "user", "content": "hello"}], "params": {"temperature": 0}}
    assert body["metadata"] == {"k": "v"}


def test_a_run_done_by_the_real_worker_reads_from_the_projected_row(
    agentstream: dict[str, Any], sees_all_events: dict[str, Any]
) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    run_id = post(client, hello()).json()["id"]
    work(agentstream)
    project(agentstream)
    body = client.get(f"{RUNS}{run_id}/").json()
    assert body["status"] == "succeeded"
    assert body["output"] == {"echo": "hello"}
    assert body["finished_at"] is not None
    assert "events" not in body  # events are opt-in
    with_events = client.get(f"{RUNS}{run_id}/?events=true").json()
    types = [e["type"] for e in with_events["events"]]
    assert types == ["assistant.message", "run.succeeded"]  # user-visible by default
    every = client.get(f"{RUNS}{run_id}/?events=true&include_all=true").json()["events"]
    assert [e["seq"] for e in every] == list(range(1, len(every) + 1))
    assert every[0]["type"] == "run.queued"


def test_an_ended_run_reads_with_its_output_before_the_projector_and_on_an_idempotent_replay(
    agentstream: dict[str, Any],
) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    run_id = post(client, hello(idempotency_key="k-done")).json()["id"]
    work(agentstream)  # ended in Redis; nothing projected: there is no row yet
    body = client.get(f"{RUNS}{run_id}/").json()
    assert (body["status"], body["output"], body["error"]) == ("succeeded", {"echo": "hello"}, None)
    replay = post(client, hello(idempotency_key="k-done"))
    assert (replay.status_code, replay.json()["id"]) == (200, run_id)
    assert replay.json()["output"] == {"echo": "hello"}


def test_same_idempotency_key_and_body_is_200_with_the_same_run(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    first = post(client, hello(idempotency_key="k1"))
    again = post(client, hello(idempotency_key="k1"))
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]


def test_same_idempotency_key_with_a_different_body_is_409(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    assert post(client, hello(idempotency_key="k1")).status_code == 201
    conflict = post(client, {**hello(idempotency_key="k1"), "params": {"other": 1}})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"


def test_idempotency_keys_are_scoped_to_their_owner(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    (one, _), (two, _) = anon_client(), anon_client()
    a = post(one, hello(idempotency_key="shared"))
    b = post(two, hello(idempotency_key="shared"))
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]


def test_unknown_agent_key_is_400_listing_the_known_keys(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream, "echo", "sleeper")
    client, _ = anon_client()
    response = post(client, hello(agent_key="nope"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert "'nope'" in error["message"] and "echo, sleeper" in error["message"]
    assert "agent_key" in error["details"]


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([{"content": "no role"}], "messages[0].role"),
        ([{"role": "user", "content": "ok"}, {"role": "wizard", "content": "x"}], "messages[1].role"),
        ([{"role": "user", "content": 42}], "messages[0].content"),
        ("not a list", "messages"),
    ],
)
def test_malformed_messages_are_400_naming_the_field(
    agentstream: dict[str, Any], messages: Any, field: str
) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    response = post(client, {"agent_key": "echo", "messages": messages})
    assert response.status_code == 400
    assert field in response.json()["error"]["message"]


def test_body_over_max_request_bytes_is_413_and_nothing_is_written(
    agentstream: dict[str, Any], settings: Any
) -> None:
    settings.AGENTSTREAM = {**agentstream, "MAX_REQUEST_BYTES": 2000}
    announce_sync(settings.AGENTSTREAM)
    client, _ = anon_client()
    response = post(client, hello(metadata={"blob": "x" * 5000}))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert client.get(RUNS).json()["count"] == 0


def test_runs_are_append_only_put_patch_delete_are_405(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    run_id = post(client, hello()).json()["id"]
    for method in ("put", "patch", "delete"):
        response = getattr(client, method)(
            f"{RUNS}{run_id}/", json.dumps(hello()), content_type="application/json"
        )
        assert response.status_code == 405, method
        assert response.json()["error"]["code"] == "method_not_allowed"


def test_cancel_of_a_queued_run_is_202_and_409_once_it_ended(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    run_id = post(client, hello()).json()["id"]
    cancelled = client.post(f"{RUNS}{run_id}/cancel/")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    assert client.get(f"{RUNS}{run_id}/").json()["status"] == "cancelled"
    again = client.post(f"{RUNS}{run_id}/cancel/")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "run_terminal"


def test_cancel_of_a_running_run_is_requested_from_its_worker(agentstream: dict[str, Any]) -> None:
    client, session_id = anon_client()

    run_id = with_store(agentstream, lambda store: running(store, anonymous_owner(session_id))).run_id
    response = client.post(
        f"{RUNS}{run_id}/cancel/", json.dumps({"reason": "stop"}), content_type="application/json"
    )
    assert response.status_code == 202
    assert response.json()["status"] == "cancel_requested"


def test_list_is_paginated_and_filters_by_status_agent_key_and_conversation(
    agentstream: dict[str, Any],
) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    conversation = post(client, {"title": "chat"}, "/api/agents/conversations/").json()["id"]
    in_conversation = post(client, hello(conversation_id=conversation)).json()["id"]
    to_cancel = post(client, hello()).json()["id"]
    client.post(f"{RUNS}{to_cancel}/cancel/")
    for _ in range(3):
        post(client, hello())
    project(agentstream)
    page = client.get(f"{RUNS}?page_size=2").json()
    assert page["count"] == 5 and len(page["results"]) == 2 and page["next"]
    assert [r["id"] for r in client.get(f"{RUNS}?status=cancelled").json()["results"]] == [to_cancel]
    assert [r["id"] for r in client.get(f"{RUNS}?conversation={conversation}").json()["results"]] == [
        in_conversation
    ]
    assert client.get(f"{RUNS}?agent_key=echo").json()["count"] == 5
    assert client.get(f"{RUNS}?agent_key=other").json()["count"] == 0
    bad = client.get(f"{RUNS}?status=exploded")
    assert bad.status_code == 400 and "status" in bad.json()["error"]["message"]


def test_a_run_in_someone_elses_conversation_is_404(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    (owner, _), (other, _) = anon_client(), anon_client()
    conversation = post(owner, {"title": "mine"}, "/api/agents/conversations/").json()["id"]
    response = post(other, hello(conversation_id=conversation))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_reject_policy_on_a_busy_conversation_is_409(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    conversation = post(client, {"title": "chat"}, "/api/agents/conversations/").json()["id"]
    assert post(client, hello(conversation_id=conversation)).status_code == 201
    busy = post(client, hello(conversation_id=conversation, multitask_strategy="reject"))
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "conversation_busy"


def test_an_unknown_or_malformed_run_id_is_a_json_404(agentstream: dict[str, Any]) -> None:
    client, _ = anon_client()
    for run_id in ("00000000-0000-4000-8000-000000000000", "not-a-uuid"):
        response = client.get(f"{RUNS}{run_id}/")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_completed_run_helper_events_are_in_the_stream(
    agentstream: dict[str, Any], sees_all_events: dict[str, Any]
) -> None:
    client, session_id = anon_client()

    run_id = with_store(agentstream, lambda store: complete_run(store, anonymous_owner(session_id)))
    body = client.get(f"{RUNS}{run_id}/?events=1&include_all=1").json()
    assert body["status"] == "succeeded"
    assert [e["type"] for e in body["events"]] == ["run.queued", "run.started", "run.succeeded"]


def test_the_traceparent_header_of_the_creating_request_rides_in_the_runs_queued_metadata(
    agentstream: dict[str, Any],
) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    created = post(client, hello(metadata={"k": "v"}), HTTP_TRACEPARENT=traceparent)
    assert created.status_code == 201, created.content

    run_id = created.json()["id"]
    assert run(lambda: _metadata_of(agentstream, run_id)) == {"k": "v", "traceparent": traceparent}
    plain = post(client, hello())
    assert run(lambda: _metadata_of(agentstream, plain.json()["id"])) == {}


async def _metadata_of(values: dict[str, Any], run_id: str) -> Any:
    store = store_for(values)
    try:
        return (await store.read_run(run_id))[0].payload["metadata"]
    finally:
        await store.redis.aclose()

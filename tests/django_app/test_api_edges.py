"""The API's answers at its edges: paths it does not serve, pagination input and links, bodies
with fields they do not take, long event lists, branch parents and ``Location`` — on fakeredis
and real Redis, with PostgreSQL (SQLite locally when it is absent)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from agentstream.core.events import NewEvent
from agentstream.core.ids import anonymous_owner
from agentstream.django_app.api.authentication import issue_token
from tests.django_app.conftest import anon_client
from tests.django_app.helpers import announce_sync, complete_run, project, with_store, work

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/agents/"
RUNS = f"{API}runs/"
CONV = f"{API}conversations/"


def post(client: Client, path: str, body: Any) -> Any:
    return client.post(path, json.dumps(body), content_type="application/json")


def hello(**more: Any) -> dict[str, Any]:
    return {"agent_key": "echo", "messages": [{"role": "user", "content": "hello"}], **more}


def error_code(response: Any) -> str:
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    return str(response.json()["error"]["code"])


def test_a_path_without_its_trailing_slash_is_a_308_that_keeps_the_post(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    _, token = issue_token()
    client = Client(enforce_csrf_checks=True, HTTP_X_ANONYMOUS_TOKEN=token)  # as a real server checks
    answer = client.post(f"{API}runs?x=1", json.dumps(hello()), content_type="application/json")
    assert answer.status_code == 308 and error_code(answer) == "trailing_slash"
    assert answer["Location"] == f"{RUNS}?x=1"  # 308: the client sends the POST again, body and all
    assert post(client, RUNS, hello()).status_code == 201


def test_unknown_paths_under_the_routes_and_format_suffixes_are_json_404s(
    agentstream: dict[str, Any],
) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    run_id = post(client, RUNS, hello()).json()["id"]
    for path in (f"{RUNS}{run_id}/nope/", f"{RUNS}{run_id}.json", f"{API}runs.json", f"{API}memory.json"):
        answer = client.get(path)
        assert answer.status_code == 404 and error_code(answer) == "not_found", path
        assert "runs/" in answer.json()["error"]["message"]


def test_bad_page_numbers_are_400_and_page_links_never_carry_the_token(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    _, token = issue_token()
    client = Client(HTTP_X_ANONYMOUS_TOKEN=token)
    for _ in range(2):
        post(client, RUNS, hello())
    project(agentstream)
    for page in ("abc", "0", "-1"):
        answer = client.get(RUNS, {"page": page})
        assert answer.status_code == 400 and "page" in answer.json()["error"]["details"], page
    past = client.get(RUNS, {"page": 9})
    assert past.status_code == 404 and "past the last page (1)" in past.json()["error"]["message"]
    anonymous = Client()  # the token in the query, as EventSource callers send it
    listing = anonymous.get(RUNS, {"anonymous_token": token, "page_size": 1}).json()
    assert listing["count"] == 2 and listing["next"] is not None
    assert "anonymous_token" not in listing["next"] and token not in listing["next"]
    second = anonymous.get(f"{listing['next']}&anonymous_token={token}").json()
    assert second["previous"] is not None and "anonymous_token" not in second["previous"]


def test_the_run_list_filters_by_conversation_id_as_by_conversation(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    conv = post(client, CONV, {"agent_key": "echo"}).json()["id"]
    inside = post(client, RUNS, hello(conversation_id=conv)).json()["id"]
    post(client, RUNS, hello())
    project(agentstream)
    for name in ("conversation", "conversation_id"):
        assert [r["id"] for r in client.get(RUNS, {name: conv}).json()["results"]] == [inside], name
    assert client.get(RUNS, {"conversation_id": "zzz"}).status_code == 400


def test_a_parent_message_of_no_run_of_the_conversation_is_400(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    conv = post(client, CONV, {"agent_key": "echo"}).json()["id"]
    first = post(client, RUNS, hello(conversation_id=conv)).json()["id"]
    elsewhere = post(client, RUNS, hello()).json()["id"]
    work(agentstream)
    for parent in ("00000000-0000-4000-8000-000000000000:0", f"{elsewhere}:0"):
        answer = post(client, RUNS, hello(conversation_id=conv, parent_message_id=parent))
        assert answer.status_code == 400 and "parent_message_id" in answer.json()["error"]["details"], parent
    follows = post(client, RUNS, hello(conversation_id=conv, parent_message_id=f"{first}:1"))
    assert follows.status_code == 201


def test_bodies_with_fields_they_do_not_take_are_400_naming_them(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    conv = post(client, CONV, {"agent_key": "echo"}).json()["id"]
    post(client, RUNS, hello(conversation_id=conv))
    work(agentstream)
    project(agentstream)
    message = client.get(f"{CONV}{conv}/messages/").json()["messages"][0]["id"]
    typos = [
        (f"{CONV}{conv}/edit/", {"message_id": message, "contnet": "EDITED"}, "contnet"),
        (f"{CONV}{conv}/switch-branch/", {"branch_id": "x", "brnach": 1}, "brnach"),
        (f"{API}knowledge/search/", {"embedding": [1.0], "kidn": "x"}, "kidn"),
    ]
    for path, body, typo in typos:
        answer = post(client, path, body)
        assert answer.status_code == 400 and typo in answer.json()["error"]["details"], path
    memory = client.put(
        f"{API}memory/k/", json.dumps({"value": 1, "ttl": 5}), content_type="application/json"
    )
    assert memory.status_code == 400 and "ttl" in memory.json()["error"]["details"]
    # edit/ takes an idempotency key: its retry is the same run
    edits = [
        post(client, f"{CONV}{conv}/edit/", {"message_id": message, "idempotency_key": "e1"}) for _ in "ab"
    ]
    assert [e.status_code for e in edits] == [201, 200] and edits[0].json()["id"] == edits[1].json()["id"]
    assert edits[0]["Location"].endswith(f"{RUNS}{edits[0].json()['id']}/")


def test_options_on_the_lists_describe_the_bodies_post_takes(agentstream: dict[str, Any]) -> None:
    client, _ = anon_client()
    runs = client.options(RUNS).json()["actions"]["POST"]
    assert {"agent_key", "messages", "idempotency_key"} <= set(runs) and "status" not in runs
    conversations = client.options(CONV).json()["actions"]["POST"]
    assert "agent_key" in conversations and "run_count" not in conversations


def test_events_true_lists_what_the_caller_sees_up_to_the_limit_and_says_when_more_follow(
    agentstream: dict[str, Any], sees_all_events: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentstream.django_app.api import runs

    monkeypatch.setattr(runs, "EVENTS_LIMIT", 5)
    monkeypatch.setattr(runs, "EVENTS_PAGE", 4)
    client, session_id = anon_client()
    hidden = [NewEvent("tool.call", {"name": "t"}) for _ in range(9)]  # debug: not shown by default
    shown = [NewEvent("assistant.message", {"content": f"m{i}"}) for i in range(3)]
    events = [*hidden, *shown]
    run_id = with_store(agentstream, lambda store: complete_run(store, anonymous_owner(session_id), events))
    body = client.get(f"{RUNS}{run_id}/", {"events": "true"}).json()
    assert [e["type"] for e in body["events"]] == ["assistant.message"] * 3 + ["run.succeeded"]
    assert body["events_truncated"] is False
    every = client.get(f"{RUNS}{run_id}/", {"events": "true", "include_all": "true"}).json()
    assert [e["seq"] for e in every["events"]] == [1, 2, 3, 4, 5] and every["events_truncated"] is True


def test_a_conversation_for_an_agent_no_one_knows_is_400_listing_the_known_ones(
    agentstream: dict[str, Any],
) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    unknown = post(client, CONV, {"agent_key": "nope"})
    assert unknown.status_code == 400 and "echo" in unknown.json()["error"]["details"]["agent_key"][0]
    assert post(client, CONV, {"agent_key": ""}).status_code == 201  # none named: any agent later
    assert post(client, CONV, {}).status_code == 201


def test_a_run_of_a_deleted_conversation_is_404_before_the_projector_too(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    conv = post(client, CONV, {"agent_key": "echo"}).json()["id"]
    run_id = post(client, RUNS, hello(conversation_id=conv)).json()["id"]
    assert client.get(f"{RUNS}{run_id}/").status_code == 200  # from Redis: no row yet
    assert client.delete(f"{CONV}{conv}/").status_code == 204
    for _ in ("from Redis", "from the row"):
        assert client.get(f"{RUNS}{run_id}/").status_code == 404
        assert client.get(f"{RUNS}{run_id}/events/").status_code == 404
        project(agentstream)
    assert client.get(RUNS).json()["results"] == []


def test_values_json_cannot_hold_read_as_a_note_not_a_500(agentstream: dict[str, Any]) -> None:
    """msgpack takes tuple keys and 1,024 levels; the API's JSON does not. Before the projector
    (which stores the same note), the run's output and ?events=true were a 500 for the whole
    response."""
    from tests.django_app.helpers import finish, running

    client, session_id = anon_client()
    deep: Any = 0
    for _ in range(300):
        deep = [deep]

    async def make(store: Any) -> str:
        c = await running(store, anonymous_owner(session_id))
        await store.append_many(
            c.run_id, c.attempt, [NewEvent("progress", {"deep": deep}), NewEvent("progress", {"n": 1})]
        )
        await finish(store, c, output={(0, 1): "cell"})
        return str(c.run_id)

    run_id = with_store(agentstream, make)
    body = client.get(f"{RUNS}{run_id}/", {"events": "true"}).json()
    assert body["status"] == "succeeded"
    assert body["output"]["not_json"].startswith("cannot be sent as JSON")
    progress = [e["payload"] for e in body["events"] if e["type"] == "progress"]
    assert progress[0]["not_json"].startswith("cannot be sent as JSON") and progress[1] == {"n": 1}

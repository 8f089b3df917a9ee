"""Conversation branching through the API: edit a past user message and regenerate an answer
(each a new run on a new branch), switch branches (an event), ``messages/`` and
``get_message_history()`` follow the branch shown, and a new message continues it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from agentstream.django_app.models import Conversation, Run
from tests.django_app.conftest import anon_client
from tests.django_app.helpers import announce_sync, project, work

pytestmark = pytest.mark.django_db

CONV = "/api/agents/conversations/"


def post(client: Client, path: str, body: dict[str, Any]) -> Any:
    return client.post(path, json.dumps(body), content_type="application/json")


def say(client: Client, conv: str, text: str, **extra: Any) -> str:
    answer = post(
        client,
        "/api/agents/runs/",
        {
            "agent_key": "echo",
            "conversation_id": conv,
            "messages": [{"role": "user", "content": text}],
            **extra,
        },
    )
    assert answer.status_code == 201, answer.json()
    return str(answer.json()["id"])


def shown(client: Client, conv: str) -> dict[str, Any]:
    body = client.get(f"{CONV}{conv}/messages/").json()
    assert isinstance(body, dict)
    return body


def texts(body: dict[str, Any]) -> list[str]:
    return [str(m["content"]) for m in body["messages"]]


def settle(values: dict[str, Any]) -> None:
    work(values)
    project(values)


def test_edit_regenerate_and_switch_branches(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    conv = post(client, CONV, {"agent_key": "echo"}).json()["id"]
    say(client, conv, "hi")
    settle(agentstream)
    say(client, conv, "how are you")
    settle(agentstream)
    main = shown(client, conv)
    assert texts(main) == ["hi", "echo: hi", "how are you", "echo: how are you"]
    ids = [m["id"] for m in main["messages"]]
    assert [m["parent_message_id"] for m in main["messages"]] == [None, *ids[:-1]]
    main_branch = main["active_branch_id"]
    assert {m["branch_id"] for m in main["messages"]} == {main_branch}

    # edit the second user message: a new run, following "echo: hi", on a new branch
    edited = post(client, f"{CONV}{conv}/edit/", {"message_id": ids[2], "content": "how old are you"})
    assert edited.status_code == 201, edited.json()
    settle(agentstream)
    after_edit = shown(client, conv)
    assert texts(after_edit) == ["hi", "echo: hi", "how old are you", "echo: how old are you"]
    edit_branch = after_edit["active_branch_id"]
    assert edit_branch == edited.json()["id"] != main_branch
    assert after_edit["messages"][2]["parent_message_id"] == ids[1]
    assert len(after_edit["branches"]) == 2

    # regenerate the first answer: the same user message again, from the start, a third branch
    regenerated = post(client, f"{CONV}{conv}/edit/", {"message_id": ids[1]})
    assert regenerated.status_code == 201
    settle(agentstream)
    regen = shown(client, conv)
    assert texts(regen) == ["hi", "echo: hi"] and regen["messages"][0]["parent_message_id"] is None
    assert regen["active_branch_id"] == regenerated.json()["id"]
    assert len(regen["branches"]) == 3

    # switch back to the main branch: an event; the answer shows it at once, the read-model after
    switched = post(client, f"{CONV}{conv}/switch-branch/", {"branch_id": main_branch})
    assert switched.status_code == 200 and texts(switched.json()) == texts(main)
    project(agentstream)
    assert texts(shown(client, conv)) == texts(main)
    row = Conversation.objects.get(id=conv)
    assert row.active_branch_id == main_branch
    assert row.get_message_history() == [
        {"role": m["role"], "content": m["content"]} for m in main["messages"]
    ]

    # a new message continues the branch shown, not the newest run
    follow_up = say(client, conv, "and then?", idempotency_key="k-follow")
    settle(agentstream)
    assert Run.objects.get(id=follow_up).parent_message_id == ids[-1]
    # its retry is the same request, though the branch shown no longer names a parent for it
    retry = post(
        client,
        "/api/agents/runs/",
        {
            "agent_key": "echo",
            "conversation_id": conv,
            "messages": [{"role": "user", "content": "and then?"}],
            "idempotency_key": "k-follow",
        },
    )
    assert (retry.status_code, retry.json()["id"]) == (200, follow_up)
    assert texts(shown(client, conv)) == [*texts(main), "and then?", "echo: and then?"]
    assert shown(client, conv)["active_branch_id"] == main_branch


def test_branch_requests_that_name_nothing_are_refused(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    conv = post(client, CONV, {"agent_key": "echo"}).json()["id"]
    say(client, conv, "hi")
    settle(agentstream)
    unknown = "00000000-0000-4000-8000-000000000000:0"
    assert post(client, f"{CONV}{conv}/edit/", {"message_id": unknown}).status_code == 400
    assert post(client, f"{CONV}{conv}/edit/", {"message_id": "nope"}).status_code == 400
    assert post(client, f"{CONV}{conv}/switch-branch/", {"branch_id": "nope"}).status_code == 400
    orphan = post(client, "/api/agents/runs/", {"agent_key": "echo", "parent_message_id": "root"})
    assert orphan.status_code == 400 and "conversation" in orphan.json()["error"]["message"]
    other, _ = anon_client()
    assert post(other, f"{CONV}{conv}/switch-branch/", {"branch_id": "x"}).status_code == 404
    message_id = shown(client, conv)["messages"][0]["id"]
    assert post(other, f"{CONV}{conv}/edit/", {"message_id": message_id}).status_code == 404

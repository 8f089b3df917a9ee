"""The ownership matrix: every endpoint and the stream x every kind of caller. The owner gets its
answer; anyone else gets 404 (never a hint that the id exists); no credentials get 401."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client

from agentstream.core.ids import anonymous_owner, user_owner
from agentstream.django_app.api.authentication import issue_token
from tests.django_app.conftest import run, store_for
from tests.django_app.helpers import announce, complete_run

pytestmark = pytest.mark.django_db


@dataclass
class Resources:
    done_run: str  # a finished run (its stream ends)
    queued_run: str
    conversation: str


def J(client: Client, method: str, path: str, body: Any = None) -> Any:
    return getattr(client, method)(path, json.dumps(body or {}), content_type="application/json")


ENDPOINTS: dict[str, tuple[Callable[[Client, Resources], Any], int]] = {
    "retrieve run": (lambda c, r: c.get(f"/api/agents/runs/{r.done_run}/"), 200),
    "retrieve run with events": (lambda c, r: c.get(f"/api/agents/runs/{r.done_run}/?events=true"), 200),
    "cancel run": (lambda c, r: c.post(f"/api/agents/runs/{r.queued_run}/cancel/"), 202),
    "event stream": (lambda c, r: c.get(f"/api/agents/runs/{r.done_run}/events/"), 200),
    "event stream (seed path)": (lambda c, r: c.get(f"/api/agents/runs/{r.done_run}/events/stream/"), 200),
    "retrieve conversation": (lambda c, r: c.get(f"/api/agents/conversations/{r.conversation}/"), 200),
    "rename conversation": (
        lambda c, r: J(c, "patch", f"/api/agents/conversations/{r.conversation}/", {"title": "x"}),
        200,
    ),
    "delete conversation": (lambda c, r: c.delete(f"/api/agents/conversations/{r.conversation}/"), 204),
    "conversation messages": (
        lambda c, r: c.get(f"/api/agents/conversations/{r.conversation}/messages/"),
        200,
    ),
    "submit into conversation": (
        lambda c, r: J(
            c,
            "post",
            "/api/agents/runs/",
            {"agent_key": "echo", "messages": [], "conversation_id": r.conversation},
        ),
        201,
    ),
}


def principals(django_user_model: Any) -> dict[str, tuple[Client, str | None]]:
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    out: dict[str, tuple[Client, str | None]] = {}
    for name, user in (("alice", alice), ("bob", bob)):
        client = Client()
        client.force_login(user)
        out[name] = (client, user_owner(user.pk))
    for name in ("alice's anonymous session", "another anonymous session"):
        session, token = issue_token()
        out[name] = (Client(HTTP_X_ANONYMOUS_TOKEN=token), anonymous_owner(session.id))
    out["no credentials"] = (Client(), None)
    return out


def make_resources(values: dict[str, Any], owner: str) -> Resources:
    async def go() -> Resources:
        store = store_for(values)
        try:
            await announce(store)
            conversation = await store.create_conversation(owner, agent_key="echo", title="t")
            from agentstream.core.store import SubmitRequest

            queued = await store.submit(SubmitRequest(agent_key="echo", owner=owner))
            return Resources(await complete_run(store, owner), queued.run_id, conversation)
        finally:
            await store.redis.aclose()

    return run(go)


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("owned_by", ["alice", "alice's anonymous session"])
@pytest.mark.parametrize(
    "caller", ["alice", "bob", "alice's anonymous session", "another anonymous session", "no credentials"]
)
def test_only_the_owner_sees_a_resource_others_get_404_and_strangers_401(
    agentstream: dict[str, Any], django_user_model: Any, endpoint: str, owned_by: str, caller: str
) -> None:
    everyone = principals(django_user_model)
    resources = make_resources(agentstream, everyone[owned_by][1] or "")
    call, owner_status = ENDPOINTS[endpoint]
    response = call(everyone[caller][0], resources)
    if caller == owned_by:
        expected = owner_status
    elif caller == "no credentials":
        expected = 401
    else:
        expected = 404
    assert response.status_code == expected, getattr(response, "content", b"")[:300]
    if expected >= 400:
        assert response.json()["error"]["code"] in ("not_found", "not_authenticated")
    if owner_status == 200 and expected == 200 and response.streaming:
        b"".join(response.streaming_content)  # the finished run's stream ends


@pytest.mark.parametrize("owned_by", ["alice", "alice's anonymous session"])
def test_lists_show_only_the_callers_own_runs_and_conversations(
    agentstream: dict[str, Any], django_user_model: Any, owned_by: str
) -> None:
    from agentstream.django_app.models import Conversation, Run

    everyone = principals(django_user_model)
    owner = everyone[owned_by][1] or ""
    resources = make_resources(agentstream, owner)
    Run.objects.create(id=resources.done_run, owner=owner, agent_key="echo", status="succeeded", last_seq=9)
    Conversation.objects.create(id=resources.conversation, owner=owner, title="t")
    for caller, (client, _) in everyone.items():
        if caller == "no credentials":
            continue
        runs = client.get("/api/agents/runs/").json()["results"]
        conversations = client.get("/api/agents/conversations/").json()["results"]
        mine = caller == owned_by
        assert [r["id"] for r in runs] == ([resources.done_run] if mine else []), caller
        assert [c["id"] for c in conversations] == ([resources.conversation] if mine else []), caller

"""The stores' API x every kind of caller (the ownership matrix): the owner sees its records;
another user, an anonymous session or the owner's own other session sees none of them (404 on an
item, empty lists, no search hits); no credentials get 401. Plus the shapes and the filters."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from agentstream.core.events import Event, EventType
from agentstream.core.ids import anonymous_owner, user_owner
from agentstream.core.records import StoreKind, store_payload, task_fields
from agentstream.django_app.api.authentication import issue_token
from agentstream.django_app.stores import apply_events, get_persistence_manager

pytestmark = pytest.mark.django_db


def records_of(owner: str, run: str = "run-1") -> list[Event]:
    def ev(seq: int, etype: EventType, store: StoreKind, key: str, **body: Any) -> Event:
        return Event(run, seq, etype, store_payload(store, owner, key, 1_700_000_000_000 + seq, **body))

    return [
        ev(1, EventType.MEMORY_SET, StoreKind.MEMORY, "city", value="Lyon"),
        ev(2, EventType.PREFERENCE_SET, StoreKind.PREFERENCE, "tone", value="dry"),
        ev(3, EventType.TASK_UPSERTED, StoreKind.TASK, "t1", **task_fields(title="plan", priority=1)),
        ev(4, EventType.TASK_UPSERTED, StoreKind.TASK, "t2", **task_fields(title="ship", priority=9,
           depends_on=["t1"], status="in_progress", task_list="work")),
        ev(5, EventType.KNOWLEDGE_ADDED, StoreKind.KNOWLEDGE, "k1", text="north", kind="fact", metadata={},
           embedding=[0.0, 1.0]),
        ev(6, EventType.KNOWLEDGE_ADDED, StoreKind.KNOWLEDGE, "k2", text="east", kind="summary", metadata={},
           embedding=[1.0, 0.0]),
    ]  # fmt: skip


def search(client: Client, body: dict[str, Any]) -> Any:
    return client.post("/api/agents/knowledge/search/", json.dumps(body), content_type="application/json")


ITEMS = {
    "memory key": "/api/agents/memory/city/",
    "preference": "/api/agents/preferences/tone/",
    "task": "/api/agents/tasks/t1/",
    "knowledge item": "/api/agents/knowledge/k1/",
}
LISTS = ("/api/agents/memory/", "/api/agents/preferences/", "/api/agents/tasks/", "/api/agents/knowledge/")


@pytest.fixture
def callers(django_user_model: Any) -> dict[str, tuple[Client, str | None]]:
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    out: dict[str, tuple[Client, str | None]] = {}
    for name, user in (("alice", alice), ("bob", bob)):
        client = Client()
        client.force_login(user)
        out[name] = (client, user_owner(user.pk))
    for name in ("an anonymous session", "another anonymous session"):
        session, token = issue_token()
        out[name] = (Client(HTTP_X_ANONYMOUS_TOKEN=token), anonymous_owner(session.id))
    out["no credentials"] = (Client(), None)
    return out


@pytest.mark.parametrize("owner_name", ["alice", "an anonymous session"])
def test_only_the_owner_reads_its_stores_through_the_api(
    callers: dict[str, tuple[Client, str | None]], owner_name: str
) -> None:
    owner = callers[owner_name][1]
    assert owner is not None
    apply_events(records_of(owner))
    for name, (client, _) in callers.items():
        for noun, path in ITEMS.items():
            answer = client.get(path)
            expected = 200 if name == owner_name else 401 if name == "no credentials" else 404
            assert answer.status_code == expected, (name, noun, answer.status_code)
            if expected == 404:
                assert answer.json()["error"]["code"] == "not_found"
        for path in LISTS:
            answer = client.get(path)
            if name == "no credentials":
                assert answer.status_code == 401
                continue
            results = answer.json()["results"]
            assert answer.status_code == 200 and (len(results) > 0) == (name == owner_name), (name, path)
        found = search(client, {"embedding": [0.0, 1.0], "k": 5})
        if name == "no credentials":
            assert found.status_code == 401
        else:
            assert [m["item"]["item_id"] for m in found.json()] == (
                ["k1", "k2"] if name == owner_name else []
            )


def test_the_same_key_of_two_owners_is_two_records(callers: dict[str, tuple[Client, str | None]]) -> None:
    alice, bob = callers["alice"], callers["bob"]
    apply_events(records_of(alice[1] or ""))
    apply_events(
        [
            Event(
                "run-b",
                1,
                EventType.MEMORY_SET,
                store_payload(StoreKind.MEMORY, bob[1] or "", "city", 1, value="Oslo"),
            )
        ]
    )
    assert alice[0].get("/api/agents/memory/city/").json()["value"] == "Lyon"
    assert bob[0].get("/api/agents/memory/city/").json()["value"] == "Oslo"


def test_tasks_list_by_priority_and_filter_by_list_and_status(
    callers: dict[str, tuple[Client, str | None]],
) -> None:
    client, owner = callers["alice"]
    apply_events(records_of(owner or ""))
    tasks = client.get("/api/agents/tasks/").json()["results"]
    assert [t["task_id"] for t in tasks] == ["t2", "t1"]
    assert tasks[0] | {"updated_at": None} == {
        "task_id": "t2", "task_list": "work", "title": "ship", "status": "in_progress", "priority": 9,
        "depends_on": ["t1"], "notes": "", "metadata": {}, "updated_at": None,
    }  # fmt: skip
    assert [t["task_id"] for t in client.get("/api/agents/tasks/?task_list=work").json()["results"]] == ["t2"]
    assert [t["task_id"] for t in client.get("/api/agents/tasks/?status=not_started").json()["results"]] == [
        "t1"
    ]
    assert client.get("/api/agents/tasks/?status=done").status_code == 400


def test_knowledge_search_ranks_filters_and_refuses_bad_vectors(
    callers: dict[str, tuple[Client, str | None]],
) -> None:
    client, owner = callers["alice"]
    apply_events(records_of(owner or ""))
    best = search(client, {"embedding": [0.2, 1.0], "k": 1}).json()
    assert [m["item"]["item_id"] for m in best] == ["k1"] and 0.9 < best[0]["score"] <= 1.0
    assert [
        m["item"]["item_id"] for m in search(client, {"embedding": [0.2, 1.0], "kind": "summary"}).json()
    ] == ["k2"]
    assert search(client, {"embedding": [1.0, 0.0, 0.0]}).json() == []  # no item of that dimension
    for bad in (
        {"embedding": [0.0, 0.0]},
        {"embedding": []},
        {"embedding": "x"},
        {"embedding": [1.0], "k": 0},
    ):
        answer = search(client, bad)
        assert answer.status_code == 400, bad
        assert answer.json()["error"]["message"]


def test_the_persistence_manager_reads_one_owners_stores(
    callers: dict[str, tuple[Client, str | None]], django_user_model: Any
) -> None:
    alice = django_user_model.objects.get(username="alice")
    apply_events(records_of(user_owner(alice.pk)))
    manager = get_persistence_manager(alice)
    assert manager.memory() == {"city": "Lyon"} and manager.preferences() == {"tone": "dry"}
    assert [t.task_id for t in manager.tasks()] == ["t2", "t1"]
    assert [m.record.key for m in manager.search_knowledge([1.0, 0.1], k=1)] == ["k2"]
    bob = django_user_model.objects.get(username="bob")
    assert get_persistence_manager(bob).memory() == {}
    assert get_persistence_manager(session_id="nobody").tasks().count() == 0
    with pytest.raises(ValueError, match="authenticated user or an anonymous session"):
        get_persistence_manager(None)


def put(client: Client, path: str, body: Any) -> Any:
    return client.put(path, json.dumps(body), content_type="application/json")


def patch(client: Client, path: str, body: Any) -> Any:
    return client.patch(path, json.dumps(body), content_type="application/json")


def test_the_owner_edits_its_stores_and_nobody_else_can(
    agentstream: dict[str, Any], callers: dict[str, tuple[Client, str | None]]
) -> None:
    alice, owner = callers["alice"]
    apply_events(records_of(owner or ""))
    assert put(alice, "/api/agents/memory/city/", {"value": "Paris"}).json()["value"] == "Paris"
    assert put(alice, "/api/agents/preferences/units/", {"value": {"temp": "C"}}).status_code == 200
    done = patch(alice, "/api/agents/tasks/t1/", {"status": "complete", "priority": 4})
    assert (done.json()["status"], done.json()["priority"], done.json()["title"]) == ("complete", 4, "plan")
    for name, (client, _) in callers.items():
        if name == "alice":
            continue
        expected = 401 if name == "no credentials" else 404
        for path in ("/api/agents/memory/city/", "/api/agents/tasks/t1/", "/api/agents/knowledge/k1/"):
            assert client.delete(path).status_code == expected, (name, path)
        assert patch(client, "/api/agents/tasks/t1/", {"status": "cancelled"}).status_code == expected
        if name != "no credentials":  # the same key of another owner is that owner's own record
            assert put(client, "/api/agents/memory/city/", {"value": name}).json()["value"] == name
    assert alice.get("/api/agents/memory/city/").json()["value"] == "Paris"
    assert alice.get("/api/agents/tasks/t1/").json()["status"] == "complete"
    assert alice.delete("/api/agents/memory/city/").status_code == 204
    assert alice.get("/api/agents/memory/city/").status_code == 404
    assert alice.delete("/api/agents/knowledge/k1/").status_code == 204
    assert [m["item"]["item_id"] for m in search(alice, {"embedding": [0.0, 1.0]}).json()] == ["k2"]


def test_task_edits_are_validated(
    agentstream: dict[str, Any], callers: dict[str, tuple[Client, str | None]]
) -> None:
    alice, owner = callers["alice"]
    apply_events(records_of(owner or ""))
    assert patch(alice, "/api/agents/tasks/t1/", {"status": "done"}).status_code == 400
    cycle = patch(alice, "/api/agents/tasks/t1/", {"depends_on": ["t2"]})  # t2 already depends on t1
    assert cycle.status_code == 400 and "depend on itself" in cycle.json()["error"]["message"]
    unknown = patch(alice, "/api/agents/tasks/t1/", {"depends_on": ["nope"]})
    assert unknown.status_code == 400 and "unknown task" in unknown.json()["error"]["message"]
    assert patch(alice, "/api/agents/tasks/t1/", {"title": ""}).status_code == 400
    assert alice.get("/api/agents/tasks/t1/").json()["status"] == "not_started"  # nothing half-written

"""Hostile HTTP input: each a 4xx with the JSON error, never a 500, and nothing half-written
(no run, no conversation appears in Redis). Deep JSON, invalid UTF-8, non-finite numbers, unknown
fields, huge ``messages`` (count and size), bad ``Last-Event-ID`` / ``from_seq``, malformed ids in
every detail route of the URLconf."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.test import Client

from agentstream.core.store import redis_from_url
from tests.django_app.conftest import anon_client, run
from tests.django_app.helpers import announce_sync, complete_run, with_store
from tests.django_app.routes import routes

pytestmark = pytest.mark.django_db

RUNS = "/api/agents/runs/"
CONV = "/api/agents/conversations/"


def written(values: dict[str, Any]) -> list[str]:
    """Every run or conversation key under this test's prefix (agent queues' groups aside)."""

    async def scan() -> list[str]:
        client = redis_from_url(values["REDIS_URL"])
        try:
            keys = [k.decode() async for k in client.scan_iter(match=f"{values['KEY_PREFIX']}:*")]
        finally:
            await client.aclose()
        return [k for k in keys if ":run:" in k or ":conv:" in k]

    return run(scan)


def raw_post(client: Client, path: str, body: bytes | str, method: str = "post") -> Any:
    return client.generic(method.upper(), path, body, content_type="application/json")


def assert_error(response: Any, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], error["message"]


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"agent_key": "echo", "params": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}",
        '{"agent_key": "echo", "metadata": ' + "[" * 65 + "]" * 65 + "}",
    ],
    ids=["100k nested arrays", "5000 nested objects in params", "just over the depth limit"],
)
def test_deeply_nested_json_is_400_not_a_recursion_error(agentstream: dict[str, Any], body: str) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    assert_error(raw_post(client, RUNS, body), 400, "parse_error", "nested deeper than 64")
    assert written(agentstream) == []


def test_reasonably_nested_json_is_accepted(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    nested: Any = 1
    for _ in range(30):
        nested = {"a": [nested]}
    response = raw_post(client, RUNS, json.dumps({"agent_key": "echo", "params": nested}))
    assert response.status_code == 201, response.content[:300]


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", RUNS), ("post", CONV), ("patch", CONV + "{conv}/"), ("post", RUNS + "{run}/cancel/")],
)
def test_a_body_that_is_not_utf8_is_400(agentstream: dict[str, Any], method: str, path: str) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    conv = raw_post(client, CONV, "{}").json()["id"]
    run_id = raw_post(client, RUNS, '{"agent_key": "echo"}').json()["id"]
    before = written(agentstream)
    body = b'{"agent_key": "echo", "title": "caf\xe9 \xff\xfe"}'
    response = raw_post(client, path.format(conv=conv, run=run_id), body, method)
    assert_error(response, 400, "parse_error", "not valid UTF-8")
    assert written(agentstream) == before


@pytest.mark.parametrize("number", ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_400_and_nothing_is_written(agentstream: dict[str, Any], number: str) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    response = raw_post(client, RUNS, '{"agent_key": "echo", "params": {"x": ' + number + "}}")
    assert_error(response, 400, "parse_error")
    assert written(agentstream) == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", RUNS, {"agent_key": "echo", "conversation": "typo of conversation_id"}),
        ("post", CONV, {"title": "t", "agent": "echo"}),
        ("patch", CONV + "{conv}/", {"title": "t", "owner": "user:1"}),
        ("post", RUNS + "{run}/cancel/", {"reason": "x", "force": True}),
    ],
    ids=["create run", "create conversation", "rename conversation", "cancel run"],
)
def test_an_unknown_field_is_400_naming_it_and_the_valid_ones(
    agentstream: dict[str, Any], method: str, path: str, body: dict[str, Any]
) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    conv = raw_post(client, CONV, "{}").json()["id"]
    run_id = raw_post(client, RUNS, '{"agent_key": "echo"}').json()["id"]
    before = written(agentstream)
    response = raw_post(client, path.format(conv=conv, run=run_id), json.dumps(body), method)
    unknown = sorted(set(body) - {"agent_key", "title", "reason"})
    assert_error(response, 400, "invalid", unknown[0], "unknown field; valid fields:")
    assert set(response.json()["error"]["details"]) == set(unknown)
    assert written(agentstream) == before


def test_the_schema_says_request_bodies_take_no_unknown_field(agentstream: dict[str, Any]) -> None:
    schemas = Client().get("/api/agents/schema/?format=json").json()["components"]["schemas"]
    for name in ("RunCreate", "ConversationCreate", "PatchedConversationUpdate", "Cancel"):
        assert schemas[name]["additionalProperties"] is False, name


def test_too_many_messages_are_413_over_max_request_bytes(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    messages = [{"role": "user", "content": "hi"}] * 60_000  # ~2 MB, over the 1 MiB default
    response = raw_post(client, RUNS, json.dumps({"agent_key": "echo", "messages": messages}))
    assert_error(response, 413, "payload_too_large", "MAX_REQUEST_BYTES=1048576")
    assert written(agentstream) == []


def test_a_message_over_max_event_bytes_is_400_and_nothing_is_written(
    agentstream: dict[str, Any], settings: Any
) -> None:
    settings.AGENTSTREAM = {**agentstream, "MAX_EVENT_BYTES": 64 * 1024}
    announce_sync(settings.AGENTSTREAM)
    client, _ = anon_client()
    body = {"agent_key": "echo", "messages": [{"role": "user", "content": "x" * 100_000}]}
    response = raw_post(client, RUNS, json.dumps(body))  # under MAX_REQUEST_BYTES, over the event cap
    assert_error(response, 400, "invalid_payload", "MAX_EVENT_BYTES=65536")
    assert written(settings.AGENTSTREAM) == []


@pytest.mark.parametrize(
    "value", ["abc", "-1", "1.5", "1e3", "0x10", str(2**64), "9" * 40, "3\x00", "٣"], ids=repr
)
@pytest.mark.parametrize("how", ["Last-Event-ID", "from_seq"])
def test_a_bad_resume_position_on_a_real_run_is_400(
    agentstream: dict[str, Any], value: str, how: str
) -> None:
    client, session = anon_client()
    from agentstream.core.ids import anonymous_owner

    run_id = with_store(agentstream, lambda store: complete_run(store, anonymous_owner(session)))
    url = f"{RUNS}{run_id}/events/"
    if how == "from_seq":
        response = client.get(url, {"from_seq": value})
    else:
        response = client.get(url, HTTP_LAST_EVENT_ID=value)
    assert_error(response, 400, "invalid", "from_seq")


VALID_BODY = {"patch": '{"title": "t"}'}  # so the id, not the body, is what is wrong
# PUT of a memory key or a preference names the caller's own record: any key is a name (an
# upsert), so these are checked by the key test below, not as "no such id"
UPSERTS = {"PUT memory/(?P<pk>[^/]+)/", "PUT preferences/(?P<pk>[^/]+)/"}
MALFORMED_IDS = [
    "not-a-uuid",
    "%00",
    "%FF",
    "a" * 5000,
    "' OR 1=1 --",
    "12345678-1234-1234-1234-1234567890123",
]


@pytest.mark.parametrize("bad_id", MALFORMED_IDS, ids=lambda s: s[:20])
def test_a_malformed_id_in_every_detail_route_is_a_json_404(agentstream: dict[str, Any], bad_id: str) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    checked = 0
    for route in routes():
        if not route.detail:
            continue
        for method, _ in route.actions:
            if route.name(method) in UPSERTS:
                continue
            response = raw_post(client, route.path(bad_id), VALID_BODY.get(method, "{}"), method)
            what = (route.name(method), response.get("Content-Type"), response.content[:200])
            assert response.status_code == 404 and response["Content-Type"] == "application/json", what
            assert response.json()["error"]["code"] == "not_found", what
            assert bad_id[:200] not in response.json()["error"]["message"] or len(bad_id) <= 64
            checked += 1
    assert checked >= 8
    assert written(agentstream) == []


def test_an_id_of_nothing_is_a_json_404_on_every_detail_route(agentstream: dict[str, Any]) -> None:
    client, _ = anon_client()
    nobody = str(uuid.uuid4())
    for route in routes():
        for method, _ in route.actions if route.detail else ():
            if route.name(method) in UPSERTS:
                continue
            response = raw_post(client, route.path(nobody), VALID_BODY.get(method, "{}"), method)
            what = (route.name(method), response.get("Content-Type"), response.content[:200])
            assert response.status_code == 404 and response["Content-Type"] == "application/json", what
            assert response.json()["error"]["code"] == "not_found", what


@pytest.mark.parametrize("key", MALFORMED_IDS, ids=lambda s: s[:20])
def test_any_store_key_in_the_path_names_the_callers_own_record_or_is_a_json_400(
    agentstream: dict[str, Any], key: str
) -> None:
    client, _ = anon_client()
    stranger, _ = anon_client()
    for route in (r for r in routes() if r.detail):
        for method, _ in route.actions:
            if route.name(method) not in UPSERTS:
                continue
            path = route.path(key)
            response = raw_post(client, path, '{"value": 1}', "put")
            what = (route.name(method), response.status_code, response.content[:200])
            assert response["Content-Type"] == "application/json", what
            if response.status_code == 400:  # NUL, not UTF-8 or over the key length: named, never stored
                assert response.json()["error"]["code"] in ("invalid", "invalid_record"), what
                assert client.get(path).status_code == 404, what
                continue
            assert response.status_code == 200 and response.json()["value"] == 1, what
            assert client.get(path).json()["value"] == 1, what
            assert stranger.get(path).status_code == 404, what  # the same key of another owner

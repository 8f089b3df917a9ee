"""Conversations, anonymous sessions (signed and model-backed), hooks, errors as JSON, no CORS."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.core import signing
from django.test import Client

from agentstream.django_app.api import authentication
from agentstream.django_app.api.authentication import RedactTokenFilter, issue_token
from tests.django_app.conftest import anon_client
from tests.django_app.helpers import announce_sync, project, work

pytestmark = pytest.mark.django_db(transaction=True)

CONV = "/api/agents/conversations/"


def J(client: Client, method: str, path: str, body: Any = None) -> Any:
    return getattr(client, method)(path, json.dumps(body or {}), content_type="application/json")


# -- conversations ---------------------------------------------------------------------------------


def test_conversation_lifecycle_create_rename_messages_delete(agentstream: dict[str, Any]) -> None:
    announce_sync(agentstream)
    client, _ = anon_client()
    created = J(client, "post", CONV, {"agent_key": "echo", "title": "first", "metadata": {"a": 1}})
    assert created.status_code == 201
    conv = created.json()["id"]
    assert client.get(f"{CONV}{conv}/").status_code == 200  # before projection: from Redis
    renamed = J(client, "patch", f"{CONV}{conv}/", {"title": "renamed", "metadata": {"b": 2}})
    assert renamed.status_code == 200 and renamed.json()["title"] == "renamed"
    run_id = J(
        client,
        "post",
        "/api/agents/runs/",
        {"agent_key": "echo", "messages": [{"role": "user", "content": "hi"}], "conversation_id": conv},
    ).json()["id"]
    work(agentstream)
    project(agentstream)
    body = client.get(f"{CONV}{conv}/").json()
    assert (body["title"], body["metadata"], body["run_count"]) == ("renamed", {"b": 2}, 1)
    messages = client.get(f"{CONV}{conv}/messages/").json()["messages"]
    assert {"role": "user", "content": "hi"} in [
        {"role": m["role"], "content": m["content"]} for m in messages
    ]
    assert any(m.get("role") == "assistant" and "echo: hi" in str(m.get("content")) for m in messages)
    assert [c["id"] for c in client.get(CONV).json()["results"]] == [conv]
    assert client.delete(f"{CONV}{conv}/").status_code == 204
    assert client.get(f"{CONV}{conv}/").status_code == 404  # at once, before projection
    project(agentstream)
    assert client.get(CONV).json()["results"] == []
    # its runs went with it, as the seed's cascade took them
    assert client.get("/api/agents/runs/").json()["results"] == []
    assert client.get(f"/api/agents/runs/{run_id}/").status_code == 404
    gone = J(client, "post", "/api/agents/runs/", {"agent_key": "echo", "conversation_id": conv})
    assert gone.status_code == 404


def test_a_conversation_reads_back_as_written_before_and_after_projection(
    agentstream: dict[str, Any],
) -> None:
    """Title, metadata and times come from what was written (Redis's clock), not the web server's
    clock, and a read before the projector has applied a create or an update already shows it."""
    announce_sync(agentstream)
    client, _ = anon_client()
    created = J(client, "post", CONV, {"agent_key": "echo", "title": "first", "metadata": {"a": [1, "x"]}})
    assert created.status_code == 201
    conv = created.json()["id"]
    early = client.get(f"{CONV}{conv}/").json()
    assert early == created.json()
    assert (early["title"], early["metadata"]) == ("first", {"a": [1, "x"]})
    project(agentstream)
    assert client.get(f"{CONV}{conv}/").json() == created.json()  # the row: the same times

    renamed = J(client, "patch", f"{CONV}{conv}/", {"title": "renamed"}).json()
    assert client.get(f"{CONV}{conv}/").json() == renamed  # the row is behind: the state completes it
    assert (renamed["title"], renamed["metadata"]) == ("renamed", {"a": [1, "x"]})
    assert renamed["updated_at"] >= renamed["created_at"] == created.json()["created_at"]
    remeta = J(client, "patch", f"{CONV}{conv}/", {"metadata": {"b": None}}).json()
    assert (remeta["title"], remeta["metadata"]) == ("renamed", {"b": None})
    project(agentstream)
    assert client.get(f"{CONV}{conv}/").json() == remeta
    assert [c for c in client.get(CONV).json()["results"] if c["id"] == conv] == [remeta]


def test_patch_without_fields_is_400(agentstream: dict[str, Any]) -> None:
    client, _ = anon_client()
    conv = J(client, "post", CONV, {"title": "t"}).json()["id"]
    response = J(client, "patch", f"{CONV}{conv}/", {})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"


# -- anonymous sessions ----------------------------------------------------------------------------


def test_a_forged_token_is_401_and_never_echoed(agentstream: dict[str, Any]) -> None:
    _, token = issue_token()
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    response = Client(HTTP_X_ANONYMOUS_TOKEN=forged).get("/api/agents/runs/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"
    assert forged.encode() not in response.content and token.encode() not in response.content


def test_an_expired_token_is_401_saying_what_to_do(
    agentstream: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    long_ago = time.time() - 3600
    monkeypatch.setattr(signing.time, "time", lambda: long_ago)
    _, token = issue_token()
    monkeypatch.undo()
    with pytest.MonkeyPatch.context() as patch:
        from agentstream.core.settings import Settings

        patch.setattr(
            authentication,
            "runtime_settings",
            lambda: Settings.from_mapping({**agentstream, "ANONYMOUS_SESSION_TTL_SECONDS": 60}),
        )
        response = Client(HTTP_X_ANONYMOUS_TOKEN=token).get("/api/agents/runs/")
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


def test_the_token_also_works_as_a_query_parameter_for_eventsource(agentstream: dict[str, Any]) -> None:
    _, token = issue_token()
    assert Client().get(f"/api/agents/runs/?anonymous_token={token}").status_code == 200


class _Session:
    def __init__(self, pk: str, token: str, expired: bool) -> None:
        self.pk, self.token, self.is_expired = pk, token, expired


class _Manager:
    rows = (_Session("s-live", "tok-live", False), _Session("s-old", "tok-old", True))

    def filter(self, token: str) -> Any:
        if "\x00" in token:  # as PostgreSQL text does
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        found = [r for r in self.rows if r.token == token]

        class Result:
            def first(self) -> Any:
                return found[0] if found else None

        return Result()


class _SessionModel:
    objects = _Manager()


def test_anonymous_session_model_tokens_are_looked_up_and_expiry_is_401(
    agentstream: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(authentication, "session_model", lambda: _SessionModel)
    assert Client(HTTP_X_ANONYMOUS_TOKEN="tok-live").get("/api/agents/runs/").status_code == 200
    assert Client(HTTP_X_ANONYMOUS_TOKEN="tok-old").get("/api/agents/runs/").status_code == 401
    assert Client(HTTP_X_ANONYMOUS_TOKEN="nope").get("/api/agents/runs/").status_code == 401
    assert Client().get("/api/agents/runs/", {"anonymous_token": "tok\x00"}).status_code == 401
    monkeypatch.setattr("agentstream.django_app.api.sessions.session_model", lambda: _SessionModel)
    assert Client().post("/api/agents/anonymous-session/").status_code == 404  # sessions come from the model


def test_redact_filter_hides_tokens_in_access_logs() -> None:
    import logging

    record = logging.LogRecord(
        "uvicorn.access", 20, "", 0, '%s "%s"', ("1.2.3.4", "GET /x?anonymous_token=secret&a=1"), None
    )
    RedactTokenFilter().filter(record)
    assert "secret" not in record.getMessage() and "anonymous_token=[redacted]&a=1" in record.getMessage()


# -- hooks and errors ------------------------------------------------------------------------------


def deny(user: Any, action: str, data: Any) -> bool:
    return action != "create_run"


def no_quota(user: Any, agent_key: str) -> bool:
    return False


def test_authz_hook_refusal_is_403_and_quota_hook_refusal_is_429(
    agentstream: dict[str, Any], settings: Any
) -> None:
    body = {"agent_key": "echo", "messages": []}
    settings.AGENTSTREAM = {**agentstream, "AUTHZ_HOOK": f"{__name__}.deny"}
    announce_sync(settings.AGENTSTREAM)
    client, _ = anon_client()
    refused = J(client, "post", "/api/agents/runs/", body)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    settings.AGENTSTREAM = {**agentstream, "QUOTA_HOOK": f"{__name__}.no_quota"}
    over = J(client, "post", "/api/agents/runs/", body)
    assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
    assert client.get("/api/agents/runs/").json()["count"] == 0


QUOTA_USED: dict[str, int] = {}


def one_run_per_session(user: Any, agent_key: str) -> bool:
    """A quota per anonymous session: the hook tells sessions apart by user.anonymous_session."""
    session = getattr(user, "anonymous_session", None)
    assert session is not None and not user.is_authenticated
    QUOTA_USED[session.id] = QUOTA_USED.get(session.id, 0) + 1
    return QUOTA_USED[session.id] <= 1


def test_quota_hooks_tell_anonymous_sessions_apart(agentstream: dict[str, Any], settings: Any) -> None:
    settings.AGENTSTREAM = {**agentstream, "QUOTA_HOOK": f"{__name__}.one_run_per_session"}
    announce_sync(settings.AGENTSTREAM)
    body = {"agent_key": "echo", "messages": []}
    first, second = anon_client()[0], anon_client()[0]
    assert [J(c, "post", "/api/agents/runs/", body).status_code for c in (first, second)] == [201, 201]
    assert J(first, "post", "/api/agents/runs/", body).status_code == 429


def test_a_hook_that_does_not_import_is_a_500_that_says_what_to_fix(
    agentstream: dict[str, Any], settings: Any
) -> None:
    settings.AGENTSTREAM = {**agentstream, "AUTHZ_HOOK": "no.such.module.hook"}
    announce_sync(settings.AGENTSTREAM)
    client, _ = anon_client()
    response = J(client, "post", "/api/agents/runs/", {"agent_key": "echo"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "configuration_error" and "AUTHZ_HOOK" in error["message"]


def test_redis_unreachable_is_503_json(agentstream: dict[str, Any], settings: Any) -> None:
    settings.AGENTSTREAM = {**agentstream, "REDIS_URL": "redis://127.0.0.1:1/0"}  # nothing listens there
    client, _ = anon_client()
    response = client.get("/api/agents/runs/00000000-0000-4000-8000-000000000000/")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "redis_unavailable"
    assert response["Retry-After"] == "1"


def test_database_unreachable_is_503_json(
    agentstream: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    from agentstream.django_app.models import Run

    def down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("connection refused")

    monkeypatch.setattr(Run.objects, "filter", down)
    client, _ = anon_client()
    response = client.get("/api/agents/runs/")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"


def test_no_cors_header_by_default(agentstream: dict[str, Any]) -> None:
    client, _ = anon_client()
    response = client.get("/api/agents/runs/", HTTP_ORIGIN="https://evil.example")
    assert "Access-Control-Allow-Origin" not in response


def test_the_openapi_schema_documents_every_endpoint(agentstream: dict[str, Any]) -> None:
    schema = Client().get("/api/agents/schema/?format=json").json()
    paths = set(schema["paths"])
    assert {
        "/api/agents/runs/",
        "/api/agents/runs/{id}/",
        "/api/agents/runs/{id}/cancel/",
        "/api/agents/runs/{id}/events/",
        "/api/agents/runs/{id}/events/stream/",
        "/api/agents/conversations/",
        "/api/agents/conversations/{id}/",
        "/api/agents/conversations/{id}/messages/",
        "/api/agents/anonymous-session/",
    } <= paths
    run_ops = schema["paths"]["/api/agents/runs/{id}/"]
    assert set(run_ops) - {"parameters"} == {"get"}  # append-only
    assert "201" in schema["paths"]["/api/agents/runs/"]["post"]["responses"]
    assert (
        "text/event-stream"
        in schema["paths"]["/api/agents/runs/{id}/events/"]["get"]["responses"]["200"]["content"]
    )


# -- who sees debug and internal events ----------------------------------------------------------------

ASKED: list[tuple[str, Any]] = []


def debug_for_everyone(user: Any, action: str, data: Any) -> bool:
    ASKED.append((action, data))
    return action != "view_internal_events"


def visible(client: Client, run_id: str, query: str) -> tuple[int, list[str]]:
    """(status, event types) of the run read with its events and of its stream (same status)."""
    read = client.get(f"/api/agents/runs/{run_id}/?events=true&{query}")
    stream = client.get(f"/api/agents/runs/{run_id}/events/?{query}")
    assert read.status_code == stream.status_code, (read.content, stream.status_code)
    if read.status_code != 200:
        message = read.json()["error"]["message"]
        assert (
            message
            == json.loads(b"".join(stream.streaming_content) if stream.streaming else stream.content)[
                "error"
            ]["message"]
        )
        return read.status_code, [message]
    return 200, [e["type"] for e in read.json()["events"]]


def test_debug_and_internal_events_are_for_staff_unless_debug_mode_or_authz_hook_says_so(
    agentstream: dict[str, Any], settings: Any, django_user_model: Any
) -> None:
    from agentstream.core.events import NewEvent
    from agentstream.core.ids import anonymous_owner, user_owner
    from tests.django_app.helpers import complete_run, with_store

    user = django_user_model.objects.create_user("carol", password="x")
    client = Client()
    client.force_login(user)
    anon, session_id = anon_client()
    events = [NewEvent("tool.call", {"name": "t"}), NewEvent("assistant.message", {"content": "hi"})]
    mine = with_store(agentstream, lambda store: complete_run(store, user_owner(user.pk), events))
    theirs = with_store(agentstream, lambda store: complete_run(store, anonymous_owner(session_id), events))

    assert visible(client, mine, "") == (200, ["assistant.message", "run.succeeded"])
    for caller, run_id in ((client, mine), (anon, theirs)):
        status, (message,) = visible(caller, run_id, "include_debug=true")
        assert (
            status == 403
            and message.startswith("include_debug shows debug events")
            and "AUTHZ_HOOK" in message
        )
        status, (message,) = visible(caller, run_id, "include_all=true")
        assert status == 403 and message.startswith("include_all shows internal events")

    user.is_staff = True
    user.save()
    assert visible(client, mine, "include_debug=true") == (
        200,
        ["tool.call", "assistant.message", "run.succeeded"],
    )
    assert visible(client, mine, "include_all=true")[1][:2] == ["run.queued", "run.started"]

    settings.AGENTSTREAM = {**agentstream, "DEBUG_MODE": True}  # debug events for everyone, not internal ones
    assert visible(anon, theirs, "")[1] == ["tool.call", "assistant.message", "run.succeeded"]
    assert visible(anon, theirs, "include_debug=true")[0] == 200
    assert visible(anon, theirs, "include_all=true")[0] == 403

    settings.AGENTSTREAM = {**agentstream, "AUTHZ_HOOK": f"{__name__}.debug_for_everyone"}
    ASKED.clear()
    assert visible(anon, theirs, "include_debug=true")[0] == 200
    assert visible(anon, theirs, "include_all=true")[0] == 403
    assert ("view_debug_events", {"run_id": theirs}) in ASKED and (
        "view_internal_events",
        {"run_id": theirs},
    ) in ASKED

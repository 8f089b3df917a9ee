"""The security matrix beyond ownership (``test_ownership.py``), over every operation of the
URLconf, so an endpoint added later is covered or fails here until it is classified:

* session authentication needs the CSRF token on every unsafe operation;
* a forged or expired anonymous token is a 401 on every operation and the stream, never data;
* ``AUTHZ_HOOK`` is asked on every operation that changes something, ``QUOTA_HOOK`` on every one
  that creates a run, and a refusal writes nothing;
* the token never appears in a response (but the one that issues it) nor in any log line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import pytest
from django.core import signing
from django.test import Client

from agentstream.core.ids import anonymous_owner
from agentstream.core.store import SubmitRequest
from agentstream.django_app.api.authentication import AnonymousSession, issue_token
from agentstream.django_app.models import Conversation
from agentstream.django_app.stores import apply_events
from agentstream.projections.history import conversation_tree
from tests.django_app.conftest import LiveServer, run, store_for
from tests.django_app.helpers import announce_sync, project, work
from tests.django_app.routes import operations, unsafe_operations
from tests.django_app.test_ownership import Resources, make_resources
from tests.django_app.test_stores_api import records_of

pytestmark = pytest.mark.django_db

SALT = "agentstream.anonymous-session"


@dataclass
class World(Resources):
    """The ownership matrix's resources, plus what the newer endpoints act on."""

    chat: str = ""  # a conversation with one answered run, projected (edit/, switch-branch/)
    first_run: str = ""  # that run: its user message is "<run>:0"
    branch: str = ""  # the branch shown


def make_world(values: dict[str, Any], owner: str) -> World:
    async def chat() -> tuple[str, str]:
        store = store_for(values)
        try:
            conversation = await store.create_conversation(owner, agent_key="echo", title="chat")
            hi = [{"role": "user", "content": "hi"}]
            submitted = await store.submit(
                SubmitRequest(agent_key="echo", owner=owner, conversation_id=conversation, messages=hi)
            )
            return conversation, submitted.run_id
        finally:
            await store.redis.aclose()

    announce_sync(values)
    conversation, first = run(chat)
    work(values)  # before the matrix's resources: their queued run must stay queued
    project(values)
    apply_events(records_of(owner))  # memory "city", preference "tone", tasks "t1" "t2", knowledge "k1" "k2"
    tree = conversation_tree(Conversation.objects.get(id=conversation))
    base = asdict(make_resources(values, owner))
    return World(**base, chat=conversation, first_run=first, branch=str(tree.active_branch_id))


Body = dict[str, Any] | Callable[[World], dict[str, Any]]


@dataclass(frozen=True)
class Unsafe:
    """What an unsafe operation needs and does: a valid body, its success status, the action
    AUTHZ_HOOK is asked (None: it changes nothing the hook guards), whether it creates a run,
    whether it needs credentials at all."""

    body: Body
    status: int
    authz_action: str | None
    creates_run: bool = False
    needs_credentials: bool = True

    def body_for(self, world: World) -> dict[str, Any]:
        return self.body(world) if callable(self.body) else self.body


UNSAFE: dict[str, Unsafe] = {
    "POST runs/": Unsafe({"agent_key": "echo"}, 201, "create_run", creates_run=True),
    "POST runs/(?P<pk>[^/.]+)/cancel/": Unsafe({}, 202, "cancel_run"),
    "POST conversations/": Unsafe({"title": "t"}, 201, "create_conversation"),
    "PATCH conversations/(?P<pk>[^/.]+)/": Unsafe({"title": "x"}, 200, "update_conversation"),
    "DELETE conversations/(?P<pk>[^/.]+)/": Unsafe({}, 204, "delete_conversation"),
    "POST conversations/(?P<pk>[^/.]+)/edit/": Unsafe(
        lambda w: {"message_id": f"{w.first_run}:0", "content": "hello"}, 201, "create_run", creates_run=True
    ),
    "POST conversations/(?P<pk>[^/.]+)/switch-branch/": Unsafe(
        lambda w: {"branch_id": w.branch}, 200, "switch_branch"
    ),
    "PUT memory/(?P<pk>[^/]+)/": Unsafe({"value": "Paris"}, 200, "set_memory"),
    "DELETE memory/(?P<pk>[^/]+)/": Unsafe({}, 204, "delete_memory"),
    "PUT preferences/(?P<pk>[^/]+)/": Unsafe({"value": "warm"}, 200, "set_preference"),
    "DELETE preferences/(?P<pk>[^/]+)/": Unsafe({}, 204, "delete_preference"),
    "PATCH tasks/(?P<pk>[^/]+)/": Unsafe({"priority": 3}, 200, "update_task"),
    "DELETE tasks/(?P<pk>[^/]+)/": Unsafe({}, 204, "delete_task"),
    "DELETE knowledge/(?P<pk>[^/]+)/": Unsafe({}, 204, "delete_knowledge"),
    "POST knowledge/search/": Unsafe({"embedding": [1.0, 0.0]}, 200, None),  # reads only
    "POST anonymous-session/": Unsafe({}, 201, None, needs_credentials=False),  # how a caller gets any
}

# the record each store route acts on (``records_of``); t2: nothing depends on it
STORE_KEYS = {"memory": "city", "preferences": "tone", "tasks": "t2", "knowledge": "k1"}


def test_every_unsafe_operation_of_the_urlconf_is_classified_here() -> None:
    found = {route.name(method) for route, method, _ in unsafe_operations()}
    assert found == set(UNSAFE), "classify the new endpoint in UNSAFE (authz action, creates a run?)"


def pk_for(route_regex: str, world: World) -> str:
    top = route_regex.lstrip("^").split("/", 1)[0]
    if top in STORE_KEYS:
        return STORE_KEYS[top]
    if top == "conversations":
        return (
            world.chat
            if ("/edit/" in route_regex or "/switch-branch/" in route_regex)
            else world.conversation
        )
    return world.queued_run


def call(client: Client, route: Any, method: str, resources: World, body: Any = None) -> Any:
    path = route.path(pk_for(route.regex, resources)) if route.detail else route.path()
    payload = "" if method in ("get", "delete") else json.dumps(body if body is not None else {})
    return client.generic(method.upper(), path, payload, content_type="application/json")


def history(values: dict[str, Any]) -> tuple[set[str], list[int]]:
    """Every run's keys and the length of every partition log: a write of any kind changes one."""

    async def scan() -> tuple[set[str], list[int]]:
        store = store_for(values)
        try:
            runs = {k.decode() async for k in store.redis.scan_iter(match=f"{values['KEY_PREFIX']}:*:run:*")}
            logs = [await store.redis.xlen(store.keys.log(p)) for p in range(store.keys.partitions)]
            return runs, logs
        finally:
            await store.redis.aclose()

    return run(scan)


# -- CSRF with session authentication --------------------------------------------------------------


@pytest.mark.parametrize("operation", list(UNSAFE))
def test_session_auth_needs_the_csrf_token_on_every_unsafe_operation(
    agentstream: dict[str, Any], django_user_model: Any, operation: str
) -> None:
    announce_sync(agentstream)
    user = django_user_model.objects.create_user("alice")
    route, method = next((r, m) for r, m, _ in unsafe_operations() if r.name(m) == operation)
    spec = UNSAFE[operation]
    from agentstream.core.ids import user_owner

    resources = make_world(agentstream, user_owner(user.pk))
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    refused = call(client, route, method, resources, spec.body_for(resources))
    if not spec.needs_credentials:  # no credentials involved: nothing to forge
        assert refused.status_code == spec.status
        return
    assert refused.status_code == 403, refused.content[:300]
    error = refused.json()["error"]
    assert error["code"] == "permission_denied" and "CSRF" in error["message"]

    secret = "a" * 32  # a CSRF cookie, and the same value in the header (Django's double submit)
    client.cookies["csrftoken"] = secret
    path = route.path(pk_for(route.regex, resources)) if route.detail else route.path()
    payload = "" if method == "delete" else json.dumps(spec.body_for(resources))
    accepted = client.generic(
        method.upper(), path, payload, content_type="application/json", HTTP_X_CSRFTOKEN=secret
    )
    assert accepted.status_code == spec.status, accepted.content[:300]


def test_an_anonymous_token_in_a_header_needs_no_csrf_token(agentstream: dict[str, Any]) -> None:
    """A header a cross-site form cannot set is not ambient authority: no CSRF check."""
    announce_sync(agentstream)
    _, token = issue_token()
    client = Client(enforce_csrf_checks=True, HTTP_X_ANONYMOUS_TOKEN=token)
    response = client.post("/api/agents/runs/", {"agent_key": "echo"}, content_type="application/json")
    assert response.status_code == 201, response.content[:300]


# -- forged and expired anonymous tokens -----------------------------------------------------------


def forged_tokens(session: AnonymousSession, token: str) -> dict[str, str]:
    other, _ = issue_token()
    value, stamp, signature = token.split(":")
    long_ago = time.time() - 3600
    real_time = signing.time.time
    signing.time.time = lambda: long_ago  # type: ignore[assignment]
    try:
        expired = signing.TimestampSigner(salt=SALT).sign(session.id)
    finally:
        signing.time.time = real_time  # type: ignore[assignment]
    return {
        "tampered signature": f"{value}:{stamp}:{signature[:-3]}AAA"
        if not signature.endswith("AAA")
        else token[:-1],
        "another session's id, this signature": f"{other.id}:{stamp}:{signature}",
        "signed for another purpose (salt)": signing.TimestampSigner(salt="django.core.signing").sign(
            session.id
        ),
        "signed with another SECRET_KEY": signing.TimestampSigner(key="not-the-secret", salt=SALT).sign(
            session.id
        ),
        "expired (older than ANONYMOUS_SESSION_TTL_SECONDS)": expired,
        "not a token at all": "' OR 1=1 --",
    }


ISSUES_CREDENTIALS = "POST anonymous-session/"  # takes none, so there is nothing to forge
AUTHENTICATED_OPERATIONS = [r.name(m) for r, m, _ in operations() if r.name(m) != ISSUES_CREDENTIALS]


@pytest.mark.parametrize("operation", AUTHENTICATED_OPERATIONS)
def test_forged_and_expired_tokens_are_401_on_every_operation_and_never_show_data(
    agentstream: dict[str, Any], settings: Any, operation: str
) -> None:
    settings.AGENTSTREAM = {**agentstream, "ANONYMOUS_SESSION_TTL_SECONDS": 60}
    announce_sync(settings.AGENTSTREAM)
    session, token = issue_token()
    resources = make_world(settings.AGENTSTREAM, anonymous_owner(session.id))
    route, method = next((r, m) for r, m, _ in operations() if r.name(m) == operation)
    spec = UNSAFE.get(operation)
    for kind, forged in forged_tokens(session, token).items():
        response = call(
            Client(HTTP_X_ANONYMOUS_TOKEN=forged), route, method, resources, spec and spec.body_for(resources)
        )
        assert response.status_code == 401, (kind, response.status_code, response.content[:300])
        error = response.json()["error"]
        assert error["code"] == "authentication_failed", (kind, error)
        for secret in (forged, token, resources.queued_run, resources.done_run, resources.conversation):
            assert secret.encode() not in response.content, (kind, secret)
    # the genuine token still works: the refusals above were about the token, not the request
    genuine = call(
        Client(HTTP_X_ANONYMOUS_TOKEN=token), route, method, resources, spec and spec.body_for(resources)
    )
    assert genuine.status_code < 400, genuine.content[:300]


def test_an_expired_token_in_the_query_string_of_the_stream_is_401(
    agentstream: dict[str, Any], settings: Any
) -> None:
    settings.AGENTSTREAM = {**agentstream, "ANONYMOUS_SESSION_TTL_SECONDS": 60}
    session, token = issue_token()
    resources = make_world(settings.AGENTSTREAM, anonymous_owner(session.id))
    expired = forged_tokens(session, token)["expired (older than ANONYMOUS_SESSION_TTL_SECONDS)"]
    response = Client().get(f"/api/agents/runs/{resources.done_run}/events/", {"anonymous_token": expired})
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


# -- AUTHZ_HOOK and QUOTA_HOOK on every unsafe operation ------------------------------------------

ASKED: list[str] = []


def deny_all(user: Any, action: str, data: Any) -> bool:
    ASKED.append(action)
    return False


def no_quota(user: Any, agent_key: str) -> bool:
    ASKED.append(f"quota:{agent_key}")
    return False


@pytest.fixture
def asked() -> Iterator[list[str]]:
    ASKED.clear()
    yield ASKED
    ASKED.clear()


@pytest.mark.parametrize("operation", [name for name, spec in UNSAFE.items() if spec.authz_action])
def test_authz_hook_is_asked_on_every_unsafe_operation_and_a_refusal_changes_nothing(
    agentstream: dict[str, Any], settings: Any, operation: str, asked: list[str]
) -> None:
    settings.AGENTSTREAM = {**agentstream, "AUTHZ_HOOK": f"{__name__}.deny_all"}
    announce_sync(settings.AGENTSTREAM)
    session, token = issue_token()
    resources = make_world(settings.AGENTSTREAM, anonymous_owner(session.id))
    client = Client(HTTP_X_ANONYMOUS_TOKEN=token)
    before = history(settings.AGENTSTREAM)
    route, method = next((r, m) for r, m, _ in unsafe_operations() if r.name(m) == operation)
    response = call(client, route, method, resources, UNSAFE[operation].body_for(resources))
    assert response.status_code == 403, response.content[:300]
    assert response.json()["error"]["code"] == "permission_denied"
    assert asked == [UNSAFE[operation].authz_action]
    assert history(settings.AGENTSTREAM) == before
    assert client.get(f"/api/agents/runs/{resources.queued_run}/").json()["status"] == "queued"


@pytest.mark.parametrize("operation", [name for name, spec in UNSAFE.items() if spec.creates_run])
def test_quota_hook_is_asked_on_every_operation_that_creates_a_run(
    agentstream: dict[str, Any], settings: Any, operation: str, asked: list[str]
) -> None:
    settings.AGENTSTREAM = {**agentstream, "QUOTA_HOOK": f"{__name__}.no_quota"}
    announce_sync(settings.AGENTSTREAM)
    session, token = issue_token()
    resources = make_world(settings.AGENTSTREAM, anonymous_owner(session.id))
    before = history(settings.AGENTSTREAM)
    route, method = next((r, m) for r, m, _ in unsafe_operations() if r.name(m) == operation)
    response = call(
        Client(HTTP_X_ANONYMOUS_TOKEN=token), route, method, resources, UNSAFE[operation].body_for(resources)
    )
    assert response.status_code == 429, response.content[:300]
    assert response.json()["error"]["code"] == "quota_exceeded"
    assert asked == ["quota:echo"]
    assert history(settings.AGENTSTREAM) == before


# -- no token in responses or logs -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_token_appears_in_no_response_and_no_log_line(
    agentstream: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    announce_sync(agentstream)
    server = LiveServer()
    access = logging.getLogger("uvicorn.access")
    access.setLevel(logging.INFO)  # the server's access log, as `agentstream serve` writes it
    access.addHandler(caplog.handler)
    responses: list[httpx.Response] = []
    try:
        with server, caplog.at_level(logging.DEBUG), httpx.Client(base_url=server.url, timeout=20) as http:
            issued = http.post("/api/agents/anonymous-session/")
            token = issued.json()["token"]
            header = {"X-Anonymous-Token": token}
            api = "/api/agents"
            run_id = http.post(f"{api}/runs/", headers=header, json={"agent_key": "echo"}).json()["id"]
            conv = http.post(f"{api}/conversations/", headers=header, json={"title": "t"}).json()["id"]
            responses += [
                http.get(f"{api}/runs/", headers=header),
                http.get(f"{api}/runs/{run_id}/?events=true", headers=header),
                http.post(f"{api}/runs/{run_id}/cancel/", headers=header, json={"reason": "done"}),
                http.get(f"{api}/conversations/{conv}/messages/", headers=header),
                # EventSource cannot set headers: the token rides in the query string
                http.get(f"{api}/runs/{run_id}/events/", params={"anonymous_token": token}),
                http.get(f"{api}/runs/{run_id}/nope/", params={"anonymous_token": token}),
                http.get(
                    f"{api}/runs/00000000-0000-0000-0000-000000000000/", params={"anonymous_token": token}
                ),
                http.get(f"{api}/runs/", headers={"X-Anonymous-Token": token + "x"}),
                http.post(f"{api}/runs/", headers=header, json={"agent_key": "echo", "messages": "x"}),
            ]
    finally:
        access.removeHandler(caplog.handler)
    assert responses[4].status_code == 200 and b"run.cancelled" in responses[4].content
    session_id = token.split(":")[0]
    for response in responses:
        assert token not in response.text and token not in str(response.headers), response.request.url
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]  # not ours
    lines = [record.getMessage() + (record.exc_text or "") for record in server_side]
    leaked = [line for line in lines if token in line or session_id in line]
    assert not leaked, leaked
    assert any("anonymous_token=[redacted]" in line for line in lines), "the access log was not captured"

"""Fixtures of the API and SSE tests: the AGENTSTREAM settings of one test (its own key prefix,
on fakeredis AND real Redis), callers (users, anonymous sessions), a store and a real worker to
make events, the projector to fill the read-models, and uvicorn serving the ASGI app."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from django.test import Client

from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, redis_from_url
from agentstream.django_app.api import agent_keys, backend
from agentstream.django_app.api.authentication import issue_token
from tests.conftest import delete_prefix
from tests.services import free_port

T = TypeVar("T")


def run(make: Callable[[], Awaitable[T]]) -> T:
    """Run async test code from a sync test, on a loop of its own."""

    async def go() -> T:
        return await make()

    return asyncio.run(go())


@pytest.fixture
def agentstream(settings: Any, redis_url: str, key_prefix: str) -> Iterator[dict[str, Any]]:
    """This test's AGENTSTREAM settings (tweak a copy with ``settings.AGENTSTREAM = {...}``)."""
    values: dict[str, Any] = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": key_prefix,
        "PARTITIONS": 4,
        "LEASE_TTL_SECONDS": 2.0,
        "SSE_KEEPALIVE_SECONDS": 5.0,
        "SSE_RETRY_MS": 200,
    }
    settings.AGENTSTREAM = values
    agent_keys.forget()
    yield values
    agent_keys.forget()
    backend.shutdown()

    async def cleanup() -> None:
        client = redis_from_url(redis_url)
        try:
            await delete_prefix(client, key_prefix)
        finally:
            await client.aclose()

    run(cleanup)


def store_for(values: dict[str, Any]) -> EventStore:
    """A store on a fresh client: make it inside the loop that uses it."""
    settings = Settings.from_mapping(values)
    return EventStore(redis_from_url(settings.REDIS_URL), settings, pipeline_scripts=True)


def may_view_events(user: Any, action: str, data: Any) -> bool:
    """An AUTHZ_HOOK that lets every caller see every event of its runs (and allows the rest, as
    no hook would): for tests that look at internal events as a (non-staff, anonymous) caller."""
    return True


@pytest.fixture
def sees_all_events(settings: Any, agentstream: dict[str, Any]) -> dict[str, Any]:
    """``?include_debug`` / ``?include_all`` allowed for every caller (by default: staff only)."""
    agentstream["AUTHZ_HOOK"] = f"{__name__}.may_view_events"
    settings.AGENTSTREAM = agentstream
    return agentstream


def anon_client() -> tuple[Client, str]:
    session, token = issue_token()
    return Client(HTTP_X_ANONYMOUS_TOKEN=token), session.id


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", password="x")


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", password="x")


@pytest.fixture
def alice_client(alice: Any) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def wait_until(condition: Callable[[], bool], timeout_s: float = 10, what: str = "condition") -> None:
    """Poll a condition with a deadline (a backstop, never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} not met within {timeout_s}s")


class LiveServer:
    """uvicorn serving the project's ASGI app in a thread (its own loop): the real path."""

    def __init__(self) -> None:
        import uvicorn
        from django.core.asgi import get_asgi_application

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            get_asgi_application(),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve())

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 20, "uvicorn started")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def on_loop(self, make: Callable[[], Awaitable[T]], timeout_s: float = 10) -> T:
        """Run a coroutine on the server's loop (to look at or poke its hub)."""
        assert self.loop is not None

        async def go() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout_s)

    def hub(self) -> Any:
        from agentstream.django_app.sse.hub import _hubs

        assert self.loop is not None
        return _hubs.get(self.loop)


@pytest.fixture
def live_server_asgi(agentstream: dict[str, Any]) -> Iterator[LiveServer]:
    with LiveServer() as server:
        yield server

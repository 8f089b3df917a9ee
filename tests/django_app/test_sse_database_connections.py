"""An open SSE stream under ASGI holds no database connection: the view's connection (session auth,
ownership) is closed before the stream is served, so 500 clients do not need 500 PostgreSQL
connections (PostgreSQL's default limit is 100)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from django.db import connection
from django.test import Client

from agentstream.core.ids import user_owner
from agentstream.core.store import EventStore
from tests.django_app.conftest import LiveServer, store_for
from tests.django_app.helpers import finish, running
from tests.django_app.test_sse_asgi import wait_clients
from tests.services import POSTGRES_UP, require

pytestmark = pytest.mark.django_db(transaction=True)

STREAMS = 20


def database_connections() -> int:
    import psycopg

    from tests.services import DATABASE_URL

    with psycopg.connect(DATABASE_URL, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (connection.settings_dict["NAME"],)
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
async def store(agentstream: dict[str, Any]) -> Any:
    store = store_for(agentstream)
    yield store
    await store.redis.aclose()


async def test_held_streams_of_a_session_user_do_not_hold_a_database_connection_each(
    live_server_asgi: LiveServer, store: EventStore, django_user_model: Any
) -> None:
    require("PostgreSQL", POSTGRES_UP and connection.vendor == "postgresql")

    def login() -> tuple[str, str]:
        user = django_user_model.objects.create_user("streamer")
        client = Client()
        client.force_login(user)
        connection.close()  # this worker thread's own: the test database is dropped at the end
        return client.cookies["sessionid"].value, user_owner(user.pk)

    session_id, owner = await asyncio.to_thread(login)
    claim = await running(store, owner)
    url = f"{live_server_asgi.url}/api/agents/runs/{claim.run_id}/events/"
    before = await asyncio.to_thread(database_connections)

    async def hold(client: httpx.AsyncClient) -> str:
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
            return [line async for line in response.aiter_lines() if line.startswith("id: ")][-1]

    async with httpx.AsyncClient(timeout=20, cookies={"sessionid": session_id}) as client:
        readers = [asyncio.create_task(hold(client)) for _ in range(STREAMS)]
        await wait_clients(live_server_asgi, STREAMS)
        held = await asyncio.to_thread(database_connections)
        last = await finish(store, claim)
        assert await asyncio.wait_for(asyncio.gather(*readers), 30) == [f"id: {last}"] * STREAMS
    assert held - before < 5, f"{held - before} more database connections for {STREAMS} held streams"

"""A real browser: headless Chromium opens a page whose EventSource receives a run's events, the
server drops the connection midway (as on a slow-client overflow), the browser reconnects by
itself with Last-Event-ID, and the page ends with every event exactly once."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import websockets

from agentstream.core.events import NewEvent
from agentstream.core.ids import anonymous_owner
from agentstream.django_app.api.authentication import issue_token
from tests.django_app.conftest import LiveServer, free_port, store_for
from tests.django_app.helpers import finish, running
from tests.services import require

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-allow-origins=*",
]


class Page:
    """Just enough of the Chrome DevTools Protocol: navigate and evaluate."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> Any:
        call_id = next(self.ids)
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), 20))
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message.get("result")

    async def state(self) -> dict[str, Any]:
        result = await self.send(
            "Runtime.evaluate",
            expression="document.getElementById('out')?.textContent || '{}'",
            returnByValue=True,
        )
        return dict(json.loads(result["result"]["value"]))

    async def wait(self, condition: Any, what: str, timeout_s: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            state = await self.state()
            if condition(state):
                return state
            assert time.monotonic() < deadline, f"{what}: the page shows {state}"
            await asyncio.sleep(0.02)


@asynccontextmanager
async def chromium() -> AsyncIterator[Page]:
    assert CHROMIUM is not None
    port = free_port()
    profile = tempfile.mkdtemp(prefix="agentstream-chromium-")
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--remote-debugging-port={port}",
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    targets = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
                    page = next(t for t in targets if t["type"] == "page")
                    break
                except (httpx.HTTPError, StopIteration):
                    assert time.monotonic() < deadline, "chromium did not start"
                    await asyncio.sleep(0.05)
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            yield Page(ws)
    finally:
        process.kill()
        await asyncio.wait_for(process.wait(), 10)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
async def test_a_browser_eventsource_reconnects_midway_and_sees_every_event_exactly_once(
    settings: Any, agentstream: dict[str, Any]
) -> None:
    require("Chromium (apt-get install chromium)", CHROMIUM is not None)
    settings.AGENTSTREAM = {**agentstream, "SSE_RETRY_MS": 100}
    session, token = issue_token()
    store = store_for(settings.AGENTSTREAM)
    try:
        claim = await running(store, anonymous_owner(session.id))
        await store.append_many(
            claim.run_id, claim.attempt, [NewEvent("assistant.delta", {"i": i}) for i in range(3)]
        )
        with LiveServer() as server:
            async with chromium() as page:
                await page.send(
                    "Page.navigate", url=f"{server.url}/sse-page/?run={claim.run_id}&token={token}"
                )
                await page.wait(lambda s: len(s.get("seen", [])) >= 5, "the first events")

                async def drop() -> int:  # what an overflow does: the hub lets the client go
                    hub = server.hub()
                    dropped = list(hub._runs[claim.run_id].subscribers)
                    for subscriber in dropped:
                        hub.unsubscribe(claim.run_id, subscriber)
                        subscriber.close()
                    return len(dropped)

                assert server.on_loop(drop) == 1
                await store.append_many(
                    claim.run_id, claim.attempt, [NewEvent("tool.call", {"gap": i}) for i in range(2)]
                )
                await page.wait(lambda s: s.get("opens", 0) >= 2, "the reconnect")
                await store.append_many(
                    claim.run_id, claim.attempt, [NewEvent("assistant.message", {"i": 9})]
                )
                last = await finish(store, claim)
                state = await page.wait(lambda s: s.get("done"), "the terminal event")
                assert state["seen"] == list(range(1, last + 1)), state
                assert state["opens"] == 2 and state["errors"] >= 1
    finally:
        await store.redis.aclose()

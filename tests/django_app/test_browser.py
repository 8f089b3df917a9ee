"""A real browser: headless Chromium opens a page whose EventSource receives a run's events, the
server drops the connection midway (as on a slow-client overflow), the browser reconnects by
itself with Last-Event-ID, and the page ends with every event exactly once."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from agentstream.core.events import NewEvent
from agentstream.core.ids import anonymous_owner
from agentstream.django_app.api.authentication import issue_token
from tests.browser import CHROMIUM, Tab, chromium
from tests.django_app.conftest import LiveServer, store_for
from tests.django_app.helpers import finish, running
from tests.services import require


async def page_state(tab: Tab) -> dict[str, Any]:
    """What tests/sse_page.py's page has written into #out."""
    return dict(json.loads(await tab.js("document.getElementById('out')?.textContent || '{}'")))


async def wait_state(tab: Tab, condition: Any, what: str, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        state = await page_state(tab)
        if condition(state):
            return state
        assert time.monotonic() < deadline, f"{what}: the page shows {state}"
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_a_browser_eventsource_reconnects_midway_and_sees_every_event_exactly_once(
    settings: Any, agentstream: dict[str, Any], sees_all_events: dict[str, Any]
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
                await wait_state(page, lambda s: len(s.get("seen", [])) >= 5, "the first events")

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
                await wait_state(page, lambda s: s.get("opens", 0) >= 2, "the reconnect")
                await store.append_many(
                    claim.run_id, claim.attempt, [NewEvent("assistant.message", {"i": 9})]
                )
                last = await finish(store, claim)
                state = await wait_state(page, lambda s: s.get("done"), "the terminal event")
                assert state["seen"] == list(range(1, last + 1)), state
                assert state["opens"] == 2 and state["errors"] >= 1
    finally:
        await store.redis.aclose()

"""The dashboard in headless Chromium (Debian's ``chromium``), driven over the DevTools protocol:
it loads with no console error, a chat message streams a reply, cancel stops a sleepy-agent run,
and a screenshot shows the key elements."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, chromium
from tests.demo.live import Demo
from tests.services import IN_CI

pytestmark = pytest.mark.slow


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


async def test_the_dashboard_streams_a_chat_reply_and_cancels_a_sleepy_run(
    demo: Demo, tmp_path: Path
) -> None:
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail("CI requires chromium for the dashboard test (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    async with chromium() as page:
        await page.send("Page.navigate", url=f"{demo.url}/?token={demo.token}")
        await page.wait_for("document.querySelector('[data-testid=runs]') !== null", "the dashboard")
        await page.wait_for(
            "document.getElementById('status').textContent.includes('dead letters')", "the status panel"
        )

        # a chat message streams a reply into the conversation
        await page.js(
            "document.getElementById('agent').value = 'chat-agent';"
            "document.getElementById('message').value = 'Hello from the browser';"
            "document.getElementById('send').click(); true"
        )
        reply = await page.wait_for(
            "(() => { const m = [...document.querySelectorAll('#chat .msg.assistant')];"
            " return m.length && document.querySelector('#events').textContent.includes('run.succeeded')"
            " ? m[m.length - 1].textContent : '' })()",
            "a streamed assistant reply",
        )
        assert len(reply) > 10
        assert "Hello from the browser" in await page.js("document.getElementById('chat').textContent")

        # cancel stops a sleepy-agent run
        await page.js(
            "document.getElementById('agent').value = 'sleepy-agent';"
            "document.getElementById('message').value = 'nap';"
            "document.getElementById('params').value = '{\"steps\": 200, \"delay_ms\": 50}';"
            "document.getElementById('send').click(); true"
        )
        await page.wait_for(
            "document.getElementById('events').textContent.includes('progress')", "progress events"
        )
        await page.js("document.getElementById('cancel').click(); true")
        await page.wait_for(
            "document.getElementById('events').textContent.includes('run.cancelled')",
            "run.cancelled on the page",
        )
        await page.wait_for("document.querySelector('#runs .badge.cancelled') !== null", "a cancelled badge")

        shot = await page.send("Page.captureScreenshot", format="png")
        image = base64.b64decode(shot["data"])
        (tmp_path / "dashboard.png").write_bytes(image)
        width, height = png_size(image)
        assert width >= 1000 and height >= 600 and len(image) > 20_000  # a rendered page, not a blank one
        for testid in ("status-panel", "runs", "chat", "events"):
            visible = await page.js(
                f"(() => {{ const r = document.querySelector('[data-testid={testid}]').getBoundingClientRect();"
                " return r.width > 0 && r.height >= 0 && r.top < innerHeight })()"
            )
            assert visible, f"{testid} is not on screen"
        assert page.errors == []


async def test_the_dashboard_offers_the_registered_agents_and_shows_a_refused_request(demo: Demo) -> None:
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail("CI requires chromium for the dashboard test (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    async with chromium() as page:
        await page.send("Page.navigate", url=f"{demo.url}/?token={demo.token}")
        await page.wait_for("document.querySelector('#agent option') !== null", "the agent list")
        options = await page.js("[...document.querySelectorAll('#agent option')].map((o) => o.value)")
        assert options == ["chat-agent", "sleepy-agent", "tool-agent"]  # the registry's, not a fixed list

        # an agent the API does not know: the API's message on the page (it was an unhandled rejection)
        await page.js(
            "const agent = document.getElementById('agent'); agent.add(new Option('ghost-agent'));"
            "agent.value = 'ghost-agent'; document.getElementById('send').click(); true"
        )
        shown = await page.wait_for(
            "(() => { const e = document.getElementById('error'); return e.hidden ? '' : e.textContent })()",
            "the refusal on the page",
        )
        assert "unknown agent_key 'ghost-agent'" in shown and "chat-agent" in shown

        await page.js(
            "document.getElementById('agent').value = 'chat-agent';"
            "document.getElementById('params').value = '{not json';"
            "document.getElementById('send').click(); true"
        )
        await page.wait_for(
            "document.getElementById('error').textContent === 'params must be JSON'", "the params error"
        )
        # the browser logs the 400 itself; nothing else (an unhandled rejection was the bug)
        assert [e for e in page.errors if not e.startswith("Failed to load resource")] == []

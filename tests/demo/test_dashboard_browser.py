"""The dashboard in headless Chromium (Debian's ``chromium``), driven over the DevTools protocol:
it loads with no console error, a chat message streams a reply, cancel stops a sleepy-agent run,
and a screenshot shows the key elements."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import struct
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.demo.live import Demo, free_port
from tests.services import IN_CI

pytestmark = pytest.mark.slow

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
    "--window-size=1400,900",
]


class Browser:
    """The little of CDP this test needs; console errors and exceptions are collected as they come."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.errors: list[str] = []

    async def send(self, method: str, **params: Any) -> Any:
        call_id = next(self.ids)
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            self._collect(message)
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message.get("result")

    def _collect(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(json.dumps(params.get("args"))[:500])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(f"{params['entry'].get('text', '')[:400]} {params['entry'].get('url', '')}")

    async def js(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout_s: float = 20) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.js(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    port = free_port()
    profile = tempfile.mkdtemp(prefix="agentstream-dashboard-")
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
            browser = Browser(ws)
            for domain in ("Runtime", "Log", "Page"):
                await browser.send(f"{domain}.enable")
            yield browser
    finally:
        process.kill()
        await asyncio.wait_for(process.wait(), 10)
        shutil.rmtree(profile, ignore_errors=True)


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

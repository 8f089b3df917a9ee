"""Headless Chromium (Debian's ``chromium``) for the browser tests, driven over the DevTools
protocol with nothing but ``websockets``: navigate, evaluate, collect console errors."""

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
import websockets

from tests.services import free_port

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


class Tab:
    """One page target. Console errors and uncaught exceptions land in ``errors`` as they come."""

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
            entry = params["entry"]
            self.errors.append(f"{entry.get('text', '')[:400]} {entry.get('url', '')}")

    async def js(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout_s: float = 20) -> Any:
        """Evaluate ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.js(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)


@asynccontextmanager
async def chromium() -> AsyncIterator[Tab]:
    """A fresh headless Chromium with its own profile; killed on exit."""
    assert CHROMIUM is not None, "chromium is not installed (apt-get install chromium)"
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
            tab = Tab(ws)
            for domain in ("Runtime", "Log", "Page"):
                await tab.send(f"{domain}.enable")
            yield tab
    finally:
        process.kill()
        await asyncio.wait_for(process.wait(), 10)
        shutil.rmtree(profile, ignore_errors=True)

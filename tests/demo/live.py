"""The main job as a newcomer meets it: ``agentstream demo`` as a real subprocess, no servers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.services import free_port

TOKEN = "demo-test-token-0123456789"


@dataclass(frozen=True)
class Demo:
    url: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    home = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }
    env |= {"AGENTSTREAM_DEMO_DIR": str(home), "AGENTSTREAM_DEMO_TOKEN": TOKEN}
    log = home / "demo.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "agentstream.django_app.cli", "demo", "--port", str(port)],
            env=env,
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/agents/schema/", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"agentstream demo did not start:\n{log.read_text()}")
        time.sleep(0.1)
    try:
        yield Demo(url, TOKEN, process, log)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"agentstream demo did not stop on SIGTERM:\n{log.read_text()}")

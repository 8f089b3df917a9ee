"""The production topology of the bundled project: ``agentstream serve``, ``worker`` and
``projector`` as separate processes against real Redis and a real PostgreSQL database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psycopg
import pytest

from tests.services import DATABASE_URL, POSTGRES_UP, REDIS_UP, REDIS_URL, free_port, require

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "agentstream.django_app.cli"]


@pytest.fixture
def environment() -> Iterator[dict[str, str]]:
    require("Redis", REDIS_UP)
    require("PostgreSQL", POSTGRES_UP)
    name = f"agentstream_topology_{uuid.uuid4().hex[:8]}"
    admin = urlparse(DATABASE_URL)._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    prefix = f"topo{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env |= {
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": urlparse(DATABASE_URL)._replace(path=f"/{name}").geturl(),
        "AGENTSTREAM_KEY_PREFIX": prefix,
        "AGENTSTREAM_PARTITIONS": "4",
        "AGENTSTREAM_DEMO_TOKEN": "topology-token",
        "AGENTSTREAM_LOG_LEVEL": "WARNING",
    }
    try:
        yield env
    finally:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_serve_worker_and_projector_run_a_job_end_to_end(environment: dict[str, str], tmp_path: Path) -> None:
    def manage(*args: str) -> str:
        done = subprocess.run(
            [*CLI, "manage", *args], env=environment, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    manage("migrate", "--verbosity", "0")
    token = manage(
        "shell", "-c", "from agentstream.django_app.demo.embedded import demo_token; print(demo_token())"
    ).splitlines()[-1]  # Django 5.2's shell says what it imported first
    port = free_port()
    log = (tmp_path / "processes.log").open("wb")
    processes = [
        subprocess.Popen([*CLI, *command], env=environment, stdout=log, stderr=subprocess.STDOUT)
        for command in (
            ["serve", "--port", str(port), "--log-level", "warning"],
            ["worker", "--concurrency", "5"],
            ["projector"],
        )
    ]
    url = f"http://127.0.0.1:{port}/api/agents"
    headers = {"Authorization": f"Token {token}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/schema/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert all(p.poll() is None for p in processes), (tmp_path / "processes.log").read_text()
            assert time.monotonic() < deadline, "agentstream serve did not come up"
            time.sleep(0.1)
        run = httpx.post(
            f"{url}/runs/",
            headers=headers,
            json={"agent_key": "sleepy-agent", "messages": [], "params": {"steps": 3, "delay_ms": 10}},
            timeout=10,
        ).json()
        with httpx.stream("GET", f"{url}/runs/{run['id']}/events/", headers=headers, timeout=30) as response:
            frames = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        assert [f["type"] for f in frames] == [
            "progress",
            "progress",
            "progress",
            "assistant.message",
            "run.succeeded",
        ]

        # the separate projector writes the read-model the status command reads
        deadline = time.monotonic() + 30
        while "succeeded 1" not in manage("agentstatus"):
            assert time.monotonic() < deadline, manage("agentstatus")
            time.sleep(0.2)
        assert (
            httpx.get(f"{url}/runs/{run['id']}/", headers=headers, timeout=10).json()["status"] == "succeeded"
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                pytest.fail(f"{process.args} did not stop on SIGTERM")
        log.close()

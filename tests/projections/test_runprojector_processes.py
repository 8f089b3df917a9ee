"""``runprojector --processes N`` / ``agentstream projector --processes N``: real processes on real
Redis and PostgreSQL, supervised like ``runagent``'s workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, redis_from_url
from tests.conftest import delete_prefix
from tests.projections.conftest import in_thread, make_workload, rows
from tests.projections.test_faults import caught_up, wait_for
from tests.services import DATABASE_URL, POSTGRES_UP, REDIS_UP, REDIS_URL, require

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.redis,
    pytest.mark.postgres,
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def real_store(key_prefix: str) -> AsyncIterator[EventStore]:
    require("Redis", REDIS_UP)
    require("PostgreSQL", POSTGRES_UP)
    client = redis_from_url(REDIS_URL)
    yield EventStore(client, Settings(KEY_PREFIX=key_prefix, PARTITIONS=4))
    await delete_prefix(client, key_prefix)
    await client.aclose()


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a command in ROOT, its output to ``out`` (a pipe by default); killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(command: list[str], env: dict[str, str], out: Any = subprocess.PIPE) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def base_env(key_prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTSTREAM_", "DJANGO_"))}
    return {**env, "PYTHONPATH": str(ROOT), "AGENTSTREAM_KEY_PREFIX": key_prefix, "REDIS_URL": REDIS_URL}


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def children(pid: int) -> set[int]:
    """The supervisor's live projector processes (its children but multiprocessing's tracker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue  # not a process, or gone
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and b"resource_tracker" not in cmdline:
            found.add(int(entry.name))
    return found


async def test_agentstream_projector_with_two_processes_projects_everything(
    real_store: EventStore, key_prefix: str, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    work = await make_workload(real_store, runs=6)
    test_db = connections["default"].settings_dict["NAME"]
    env = {
        **base_env(key_prefix),
        "AGENTSTREAM_PARTITIONS": "4",
        "DATABASE_URL": DATABASE_URL.rsplit("/", 1)[0] + f"/{test_db}",  # this test's database
    }
    command = [sys.executable, "-m", "agentstream.django_app.cli", "projector", "--processes", "2", "--burst"]
    proc = spawn(command, env)
    out = (await asyncio.to_thread(proc.communicate, timeout=90))[0].decode()
    assert proc.returncode == 0, out
    assert out.count("applied ") == 2 and "Traceback" not in out  # one line per process
    assert await caught_up(real_store)
    projected = {str(r["id"]) for r in (await in_thread(rows, "default"))["runs"]}
    assert projected == set(work.run_ids)


async def test_runprojector_restarts_a_killed_process_and_sigterm_stops_them_all(
    real_store: EventStore, key_prefix: str, spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    env = {
        **base_env(key_prefix),
        "DJANGO_SETTINGS_MODULE": "tests.django_settings",
        "AGENTSTREAM_TEST_DEFAULT_NAME": str(connections["default"].settings_dict["NAME"]),
        "AGENTSTREAM_TEST_EMBEDDED_NAME": str(connections["embedded"].settings_dict["NAME"]),
    }
    log = tmp_path / "runprojector.log"
    command = [sys.executable, "-m", "django", "runprojector", "--processes", "2", "--block-ms", "100"]
    with log.open("wb") as out:
        proc = spawn(command, env, out)
    await wait_for(lambda: len(children(proc.pid)) == 2, "two projector processes")
    first = children(proc.pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    await wait_for(lambda: "exited with 137; restarting it" in log.read_text(), "the restart")
    await wait_for(lambda: len(children(proc.pid) - {victim}) == 2, "its replacement")

    work = await make_workload(real_store, runs=4)  # the processes, replacement included, project
    await wait_for(lambda: caught_up(real_store), "the projectors to catch up")
    projected = {str(r["id"]) for r in (await in_thread(rows, "default"))["runs"]}
    assert projected == set(work.run_ids)

    family = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0, log.read_text()
    assert not [pid for pid in family if alive(pid)], log.read_text()
    assert "Traceback" not in log.read_text()

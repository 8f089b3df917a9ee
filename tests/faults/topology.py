"""The bundled project's production topology (``agentstream serve | worker | projector``) as real
processes, on a ``redis-server`` of the test's own (so it can be killed and restarted) and a fresh
PostgreSQL database; plus the checks every fault test ends with."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import httpx
import psycopg
import redis

from tests.services import DATABASE_URL, POSTGRES_UP, free_port, require, wait_until

CLI = [sys.executable, "-m", "agentstream.django_app.cli"]
TERMINAL = {"run.succeeded", "run.failed", "run.cancelled", "run.timed_out"}


@dataclass
class RedisServer:
    """A ``redis-server`` with AOF ``appendfsync always`` that a test may kill -9 and restart."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ("--maxmemory-policy", "noeviction")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not on PATH (apt-get install redis-server)"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--dir", str(self.directory),
             "--logfile", str(self.directory / "redis.log"), *self.extra_args],
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.RedisError:
                return False

        try:
            wait_until(up, 20, f"redis-server on port {self.port}")
        finally:
            client.close()

    def kill(self) -> None:
        """kill -9: only what was fsynced to the AOF survives."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


def running_redis(directory: Path, *extra_args: str) -> Iterator[RedisServer]:
    """A fixture body: a redis-server of the test's own in ``directory``, stopped afterwards."""
    server = RedisServer(directory, extra_args=extra_args) if extra_args else RedisServer(directory)
    server.directory.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def fresh_database() -> Iterator[str]:
    require("PostgreSQL", POSTGRES_UP)
    name = f"agentstream_faults_{uuid.uuid4().hex[:8]}"
    admin = urlparse(DATABASE_URL)._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlparse(DATABASE_URL)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Topology:
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    token: str = ""
    _log: IO[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/agents"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*CLI, "manage", *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert not check or done.returncode == 0, done.stdout + done.stderr
        return done

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(
        self,
        worker_args: tuple[str, ...] = ("--processes", "2", "--concurrency", "10"),
        serve_env: dict[str, str] | None = None,
    ) -> None:
        """Migrate, then start the three processes; ``serve_env`` overrides the API's environment."""
        self.manage("migrate", "--verbosity", "0")
        self.token = self.manage(
            "shell", "-c", "from agentstream.django_app.demo.embedded import demo_token; print(demo_token())"
        ).stdout.splitlines()[-1]
        self._log = self.log_path.open("ab")
        commands = {
            "serve": ["serve", "--port", str(self.port), "--log-level", "warning"],
            "worker": ["worker", *worker_args],
            "projector": ["projector"],
        }
        for name, command in commands.items():
            self.processes[name] = subprocess.Popen(
                [*CLI, *command],
                env=self.env | (serve_env or {}) if name == "serve" else self.env,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def serving() -> bool:
            assert all(p.poll() is None for p in self.processes.values()), self.log()
            try:
                return httpx.get(f"{self.api}/schema/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(serving, 60, "agentstream serve")

    def assert_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        assert not dead, f"processes exited: {dead}\n{self.log()}"

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        if self._log is not None:
            self._log.close()


def environment(redis_url: str, database_url: str, **settings: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "DJANGO_SETTINGS_MODULE" and not k.startswith("AGENTSTREAM_")
    }
    env |= {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "AGENTSTREAM_KEY_PREFIX": f"faults{uuid.uuid4().hex[:8]}",
        "AGENTSTREAM_PARTITIONS": "4",
        "AGENTSTREAM_DEMO_TOKEN": "faults-token",
        "AGENTSTREAM_LOG_LEVEL": "WARNING",
        **{f"AGENTSTREAM_{k.upper()}": v for k, v in settings.items()},
    }
    return env


def assert_runs_ended_exactly_once(client: redis.Redis, keys: object, run_ids: list[str]) -> dict[str, str]:
    """Each run's stream: seqs 1..n dense with no duplicate, exactly one terminal event, and it is
    the last one. Returns the terminal type per run."""
    from agentstream.core.keys import Keys

    assert isinstance(keys, Keys)
    endings: dict[str, str] = {}
    streams: list[Any] = []
    for start in range(0, len(run_ids), 500):  # pipelined: the load test checks 10,000 runs
        with client.pipeline(transaction=False) as pipe:
            for run_id in run_ids[start : start + 500]:
                pipe.xrange(keys.run_stream(run_id))
            streams += pipe.execute()
    for run_id, entries in zip(run_ids, streams, strict=True):
        seqs = [int(entry_id.split(b"-")[1]) for entry_id, _ in entries]
        assert seqs == list(range(1, len(seqs) + 1)), f"run {run_id}: seqs not dense: {seqs}"
        types = [fields[b"t"].decode() for _, fields in entries]
        terminal = [t for t in types if t in TERMINAL]
        assert len(terminal) == 1 and types[-1] == terminal[0], f"run {run_id}: {types}"
        endings[run_id] = terminal[0]
    return endings

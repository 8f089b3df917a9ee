"""A Redis Cluster of the tests' own: 3 masters on free ports, made with ``redis-cli --cluster create``.

Started once per session (``cluster_url`` fixture) and torn down after it. A missing
``redis-server`` / ``redis-cli`` skips the cluster tests locally and fails them under CI.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.services import IN_CI, wait_until

MASTERS = 3


def binaries() -> tuple[str, str] | None:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


def missing_binaries_message() -> str:
    return "redis-server and redis-cli are needed for the Redis Cluster tests (apt-get install redis-server)"


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535 or port in taken or port + 10000 in taken:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@dataclass
class RedisClusterServers:
    directory: Path
    replicas: int = 0  # per master
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.alive())

    def alive(self) -> list[int]:
        return [port for port, proc in zip(self.ports, self.procs, strict=True) if proc.poll() is None]

    def kill(self, port: int) -> None:
        """kill -9 one node."""
        proc = self.procs[self.ports.index(port)]
        proc.kill()
        proc.wait(10)

    def start(self) -> None:
        found = binaries()
        assert found, missing_binaries_message()
        server, cli = found
        taken: set[int] = set()
        for _ in range(MASTERS * (1 + self.replicas)):
            port = free_cluster_port(taken)
            taken |= {port, port + 10000}
            self.ports.append(port)
        for port in self.ports:
            node_dir = self.directory / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            args = [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"), "--cluster-node-timeout", "2000",
                    "--appendonly", "no", "--save", "", "--dir", str(node_dir),
                    "--logfile", str(node_dir / "redis.log")]  # fmt: skip
            self.procs.append(subprocess.Popen(args))
        for port in self.ports:
            wait_until(lambda port=port: _pings(port), 20, f"cluster node on port {port}")
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        create = [
            cli,
            "--cluster",
            "create",
            *nodes,
            "--cluster-yes",
            "--cluster-replicas",
            str(self.replicas),
        ]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        wait_until(self.ok, 30, "cluster_state:ok on every node")

    def ok(self) -> bool:
        for port in self.alive():
            try:
                with redis.Redis(port=port, socket_connect_timeout=0.5) as client:
                    info = client.execute_command("CLUSTER", "INFO")
            except redis.exceptions.RedisError:
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
        return True

    def masters(self) -> set[int]:
        with redis.Redis(port=self.alive()[0]) as client:
            return {int(master[1]) for _, _, master, *_ in client.execute_command("CLUSTER", "SLOTS")}

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot."""
        with redis.Redis(port=self.alive()[0]) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise AssertionError(f"no master serves slot {slot}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()


def _pings(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except redis.exceptions.RedisError:
        return False


__all__ = ["IN_CI", "MASTERS", "RedisClusterServers", "binaries", "missing_binaries_message"]

"""The whole production flow on a 3-master Redis Cluster, as real processes (``agentstream serve``,
two ``agentstream worker`` and a projector, on ``redis+cluster://``): submit, work, project, SSE with
resume, cancel through the broadcast, reclaim after a worker is killed -9, replay, zero drift."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.cluster import RedisClusterServers
from tests.faults.topology import (
    CLI,
    TERMINAL,
    Topology,
    assert_runs_ended_exactly_once,
    environment,
    fresh_database,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.redis, pytest.mark.cluster]
PARTITIONS = 6


@pytest.fixture
def cluster_topology(redis_cluster: RedisClusterServers, tmp_path: Path) -> Iterator[Topology]:
    with fresh_database() as database_url:
        env = environment(redis_cluster.url, database_url, partitions=str(PARTITIONS), lease_ttl_seconds="2")
        topo = Topology(env, tmp_path / "processes.log")
        try:
            topo.start(worker_args=("--processes", "1", "--concurrency", "20"))
            yield topo
        finally:
            topo.stop()


def start_second_worker(topo: Topology) -> subprocess.Popen[bytes]:
    assert topo._log is not None
    process = subprocess.Popen(
        [*CLI, "worker", "--processes", "1", "--concurrency", "20"],
        env=topo.env,
        stdout=topo._log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    topo.processes["worker2"] = process
    return process


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def submit(topo: Topology, steps: int, delay_ms: int = 50) -> str:
    response = httpx.post(
        f"{topo.api}/runs/",
        headers=topo.headers,
        json={"agent_key": "sleepy-agent", "messages": [], "params": {"steps": steps, "delay_ms": delay_ms}},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def read_sse(
    topo: Topology, run_id: str, last_event_id: int | None = None, stop_after: int = 0
) -> list[tuple[int, str]]:
    """The stream's (id, type) frames: to its end, or the first ``stop_after`` then hang up."""
    headers = dict(topo.headers)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    frames: list[tuple[int, str]] = []
    with httpx.stream("GET", f"{topo.api}/runs/{run_id}/events/", headers=headers, timeout=60) as response:
        assert response.status_code == 200, response.status_code
        event_id = None
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: ") and event_id is not None:
                frames.append((event_id, json.loads(line[6:])["type"]))
                if frames[-1][1] in TERMINAL or len(frames) == stop_after:
                    break
    return frames


def test_the_whole_flow_runs_on_a_three_master_redis_cluster(
    redis_cluster: RedisClusterServers, cluster_topology: Topology
) -> None:
    from agentstream.core.keys import Keys

    topo = cluster_topology
    keys = Keys(prefix=topo.env["AGENTSTREAM_KEY_PREFIX"], partitions=PARTITIONS)
    client = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    try:
        # submit: runs land in every partition, so on every master
        run_ids: list[str] = []
        while len({keys.run_partition(r) for r in run_ids}) < PARTITIONS and len(run_ids) < 200:
            run_ids += [submit(topo, steps=5) for _ in range(12)]
        partitions = {keys.run_partition(r) for r in run_ids}
        masters = {redis_cluster.master_of(keys.run_stream(r)) for r in run_ids}
        assert len(partitions) == PARTITIONS and masters == redis_cluster.masters(), (partitions, masters)

        # SSE: one hub in the API process serves runs of every partition; a client that hangs up
        # resumes exactly after its Last-Event-ID
        watched = {keys.run_partition(r): r for r in run_ids}
        for run_id in watched.values():
            first = read_sse(topo, run_id, stop_after=2)
            rest = read_sse(topo, run_id, last_event_id=first[-1][0])
            assert first + rest == read_sse(topo, run_id), f"run {run_id}: resumed {first} + {rest}"
            assert rest[-1][1] == "run.succeeded" and [t for _, t in first + rest].count("progress") == 5

        # work + project: every run succeeded exactly once
        def ended(ids: list[str]) -> bool:
            topo.assert_alive()
            states = [client.hget(keys.run_state(r), "status") for r in ids]
            return all(s in (b"succeeded", b"failed", b"cancelled", b"timed_out") for s in states)

        wait_until(lambda: ended(run_ids), 60, "every run to end")
        assert set(assert_runs_ended_exactly_once(client, keys, run_ids).values()) == {"run.succeeded"}

        # cancel: a running run is cancelled through the broadcast, long before it would end
        long_run = submit(topo, steps=400, delay_ms=50)  # 20 s if left alone
        assert read_sse(topo, long_run, stop_after=3)[-1][1] == "progress"
        asked = time.monotonic()
        response = httpx.post(f"{topo.api}/runs/{long_run}/cancel/", headers=topo.headers, timeout=10)
        assert response.status_code in (200, 202), response.text
        wait_until(lambda: ended([long_run]), 10, "the cancelled run to end")
        assert time.monotonic() - asked < 5
        assert assert_runs_ended_exactly_once(client, keys, [long_run]) == {long_run: "run.cancelled"}

        # reclaim: kill -9 a worker holding runs; the other one takes them over after the lease
        second = start_second_worker(topo)

        def listening_workers() -> int:
            # every worker process subscribes to the cancel channel before it reads jobs (an idle
            # XREADGROUP on Redis 7.0 registers no consumer, so the queue group cannot tell)
            channel = keys.cancel_channel()
            total = 0
            for port in redis_cluster.masters():
                with redis.Redis(port=port) as node:
                    total += int(dict(node.pubsub_numsub(channel)).get(channel.encode(), 0))
            return total

        # a slow start (a loaded machine) would let the first worker take every run alone
        wait_until(lambda: listening_workers() >= 2, 60, "the second worker to listen and read")
        held = [submit(topo, steps=40, delay_ms=50) for _ in range(24)]  # 2 s each

        def holders() -> dict[str, str]:
            states = {r: client.hmget(keys.run_state(r), "status", "worker") for r in held}
            return {r: w.decode() for r, (s, w) in states.items() if s == b"running" and w}

        wait_until(lambda: len(set(holders().values())) == 2, 30, "both workers to hold runs")
        first_worker = topo.processes.pop("worker")
        os.killpg(first_worker.pid, signal.SIGKILL)
        first_worker.wait(10)
        orphaned = [r for r, w in holders().items() if not pid_alive(int(w.split(":")[1]))]
        assert orphaned, "the killed worker held no run"
        wait_until(lambda: ended(held), 90, "every run of the killed worker to be reclaimed and end")
        assert set(assert_runs_ended_exactly_once(client, keys, held).values()) == {"run.succeeded"}
        for run_id in orphaned:  # taken over: a second attempt, on the surviving worker
            attempt, worker = client.hmget(keys.run_state(run_id), "attempt", "worker")
            assert int(attempt or 0) >= 2 and pid_alive(int((worker or b"").decode().split(":")[1]))
        assert second.poll() is None

        # the projector kept up across all of it: zero drift, also after a replay from the archive
        wait_until(lambda: topo.manage("verify_projections", check=False).returncode == 0, 60, "zero drift")
        topo.manage("replay_projections")
        assert topo.manage("verify_projections", check=False).returncode == 0
        topo.assert_alive()
    finally:
        client.close()

"""Redis killed (-9) and restarted on the same port under load, with ``appendfsync always``: no
acknowledged event is lost, and the API, the workers, the projector and SSE clients carry on."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.faults.topology import (
    TERMINAL,
    RedisServer,
    Topology,
    assert_runs_ended_exactly_once,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]


class SseClient(threading.Thread):
    """A browser-like EventSource: on any cut it reconnects with ``Last-Event-ID``."""

    def __init__(self, topo: Topology, run_id: str) -> None:
        super().__init__(daemon=True)
        self.topo, self.run_id = topo, run_id
        self.frames: list[tuple[int, str]] = []
        self.reconnects = 0
        self.done = threading.Event()

    def run(self) -> None:
        url = f"{self.topo.api}/runs/{self.run_id}/events/"
        while not self.done.is_set():
            headers = dict(self.topo.headers)
            if self.frames:
                headers["Last-Event-ID"] = str(self.frames[-1][0])
            try:
                with httpx.stream("GET", url, headers=headers, timeout=30) as response:
                    if response.status_code == 204:  # resumed after the end
                        self.done.set()
                        return
                    event_id = None
                    for line in response.iter_lines():
                        if line.startswith("id: "):
                            event_id = int(line[4:])
                        elif line.startswith("data: ") and event_id is not None:
                            kind = json.loads(line[6:])["type"]
                            self.frames.append((event_id, kind))
                            if kind in TERMINAL:
                                self.done.set()
                                return
            except httpx.HTTPError:
                pass
            self.reconnects += 1
            self.done.wait(0.1)  # a client's reconnect delay, not synchronisation


def submit(topo: Topology, steps: int) -> str | None:
    """The run's id when the API acknowledged it (201), else None (refused during the outage)."""
    try:
        response = httpx.post(
            f"{topo.api}/runs/",
            headers=topo.headers,
            json={"agent_key": "sleepy-agent", "messages": [], "params": {"steps": steps, "delay_ms": 50}},
            timeout=10,
        )
    except httpx.HTTPError:
        return None
    if response.status_code == 201:
        return str(response.json()["id"])
    assert response.status_code == 503, (response.status_code, response.text)
    assert "error" in response.json()
    return None


def submit_until_acknowledged(topo: Topology, steps: int, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while (run_id := submit(topo, steps)) is None:
        assert time.monotonic() < deadline, f"no 201 within {timeout_s}s:\n{topo.log()}"
        time.sleep(0.1)  # a client's retry delay after a 503, not synchronisation
    return run_id


def test_redis_killed_and_restarted_under_load_loses_no_acknowledged_run(
    redis_server: RedisServer, topology: Topology
) -> None:
    from agentstream.core.keys import Keys

    keys = Keys(prefix=topology.env["AGENTSTREAM_KEY_PREFIX"], partitions=4)
    acknowledged = [run for run in (submit(topology, steps=20) for _ in range(20)) if run]
    assert len(acknowledged) == 20
    clients = [SseClient(topology, run_id) for run_id in acknowledged[:5]]
    for client in clients:
        client.start()
    # the fault lands while runs are mid-flight: some have started and emitted, none has ended
    wait_until(lambda: all(len(c.frames) >= 2 for c in clients), 30, "SSE clients to see events")

    redis_server.kill()
    refused = [submit(topology, steps=5) for _ in range(3)]
    assert refused == [None, None, None], "the API acknowledged a run while Redis was down"
    redis_server.start()

    # submitting goes on after the restart: the API reconnects (a client retries a 503 as told)
    acknowledged += [submit_until_acknowledged(topology, steps=5) for _ in range(10)]
    assert len(acknowledged) == 30, topology.log()

    r = redis_server.client()

    def all_ended() -> bool:
        topology.assert_alive()
        states = [r.hget(keys.run_state(run_id), "status") for run_id in acknowledged]
        return all(s in (b"succeeded", b"failed", b"cancelled", b"timed_out") for s in states)

    wait_until(all_ended, 90, "every acknowledged run to end")
    endings = assert_runs_ended_exactly_once(r, keys, acknowledged)
    assert set(endings.values()) == {"run.succeeded"}, endings
    # workers rode the outage out: no job was orphaned to wait for its lease
    assert "job task crashed" not in topology.log()

    for client in clients:
        client.join(60)
        assert client.done.is_set(), f"SSE client of {client.run_id} never saw the end"
        ids = [event_id for event_id, _ in client.frames]
        assert ids == sorted(set(ids)), f"SSE ids out of order or duplicated: {ids}"
        kinds = [kind for _, kind in client.frames]
        assert kinds.count("progress") == 20 and kinds[-1] == "run.succeeded", kinds

    # the projector reconnected and caught up: the read-models match a fresh fold of the logs
    wait_until(lambda: topology.manage("verify_projections", check=False).returncode == 0, 60, "zero drift")
    topology.assert_alive()

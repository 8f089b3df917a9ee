"""PostgreSQL unreachable from the API process (its DATABASE_URL names a closed port; the shared
cluster is never stopped): reads that need the database answer 503 with the JSON error, while
submitting, running, projecting (by the worker and projector, which reach the database) and SSE
go on."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.topology import (
    RedisServer,
    Topology,
    assert_runs_ended_exactly_once,
    environment,
    fresh_database,
    wait_until,
)
from tests.services import free_port

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture
def api_without_database(redis_server: RedisServer, tmp_path: Path) -> Iterator[Topology]:
    with fresh_database() as database_url:
        topo = Topology(environment(redis_server.url, database_url), tmp_path / "processes.log")
        closed = f"postgres://postgres@127.0.0.1:{free_port()}/nowhere"  # nothing listens there
        try:
            topo.start(worker_args=("--concurrency", "5"), serve_env={"DATABASE_URL": closed})
            yield topo
        finally:
            topo.stop()


def test_with_postgres_down_reads_answer_503_json_while_runs_and_sse_go_on(
    redis_server: RedisServer, api_without_database: Topology
) -> None:
    from agentstream.core.keys import Keys

    topo = api_without_database
    api = topo.api
    session = httpx.post(f"{api}/anonymous-session/", timeout=10)
    assert session.status_code == 201, session.text
    headers = {"X-Anonymous-Token": session.json()["token"]}

    # reads that need the database: 503, the JSON error, a Retry-After; never a 500 page
    for path in ("runs/", "conversations/"):
        response = httpx.get(f"{api}/{path}", headers=headers, timeout=10)
        assert response.status_code == 503, (path, response.status_code, response.text[:300])
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert error["code"] == "database_unavailable" and error["message"], error
        assert "Retry-After" in response.headers

    # runs go on: submitted to Redis, run by the worker, streamed over SSE by the same API
    runs = []
    for _ in range(3):
        created = httpx.post(
            f"{api}/runs/",
            headers=headers,
            json={"agent_key": "sleepy-agent", "messages": [], "params": {"steps": 3, "delay_ms": 20}},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        runs.append(created.json()["id"])
    for run_id in runs:
        with httpx.stream("GET", f"{api}/runs/{run_id}/events/", headers=headers, timeout=30) as response:
            assert response.status_code == 200
            frames = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        assert [f["type"] for f in frames] == ["progress"] * 3 + ["assistant.message", "run.succeeded"]
        # the run itself is answered from its Redis state, events included
        detail = httpx.get(f"{api}/runs/{run_id}/?events=1", headers=headers, timeout=10)
        assert detail.status_code == 200, detail.text
        assert detail.json()["status"] == "succeeded"
        assert detail.json()["events"][-1]["type"] == "run.succeeded"
    # a run Redis does not hold (expired, or never there) needs the database: 503, not a 404
    missing = httpx.get(f"{api}/runs/{uuid.uuid4()}/", headers=headers, timeout=10)
    assert missing.status_code == 503 and missing.json()["error"]["code"] == "database_unavailable"

    keys = Keys(prefix=topo.env["AGENTSTREAM_KEY_PREFIX"], partitions=4)
    assert_runs_ended_exactly_once(redis_server.client(), keys, runs)
    # the projector (which reaches the database) wrote the read-models: zero drift
    wait_until(lambda: topo.manage("verify_projections", check=False).returncode == 0, 60, "zero drift")
    topo.assert_alive()

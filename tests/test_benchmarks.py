"""The benchmark harness never rots: a tiny scenario runs through ``python -m benchmarks`` end to
end (records, latest.json, charts, RESULTS.md) into a temp dir. No timing thresholds here."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from benchmarks import e2e, peers, report
from benchmarks.__main__ import SCENARIOS
from benchmarks.__main__ import main as bench_main
from benchmarks.common import RedisClock
from tests.services import DATABASE_URL, POSTGRES_UP, REDIS_UP, REDIS_URL, require

needs_valgrind = pytest.mark.skipif(
    shutil.which("valgrind") is None, reason="valgrind is not installed (.ci/run installs it)"
)


def test_every_registered_scenario_is_a_module_with_an_async_main() -> None:
    for name in SCENARIOS:
        module = importlib.import_module(f"benchmarks.{name.replace('-', '_')}")
        assert inspect.iscoroutinefunction(module.main), name


@pytest.mark.redis
def test_a_tiny_scenario_runs_through_the_harness_into_its_own_results_dir(tmp_path: Path) -> None:
    require("Redis", REDIS_UP)
    repo_report = report.RESULTS_MD.read_text()

    assert bench_main(["limit", "--n", "300", "--rounds", "3", "--results-dir", str(tmp_path)]) == 0

    data = json.loads((tmp_path / "latest.json").read_text())
    records = [r for r in data["records"] if r["scenario"] == "limit"]
    assert {r["metric"] for r in records} == {"pipelined XADD", "XREADGROUP+XACK"}
    for r in records:
        assert {"scenario", "system", "metric", "value", "unit", "n", "when"} <= r.keys()
        assert r["rounds"] == 3 and r["n"] == 300 and r["min"] <= r["value"] <= r["max"]
    assert data["settings"]["limit"]["rounds"] == 3 and data["machine"]["cpus"] >= 1
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "## limit" in markdown and "## Goals" in markdown and "Settings:" in markdown
    assert (tmp_path / "append.png").stat().st_size > 0  # limit's records chart beside append's
    assert report.RESULTS_MD.read_text() == repo_report  # the repository's report is left alone


def test_fewer_than_three_rounds_is_refused_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_main(["limit", "--rounds", "2"])
    assert exit_.value.code == 2
    assert "at least 3 alternating rounds" in capsys.readouterr().err


@pytest.mark.redis
def test_a_quick_run_leaves_the_measured_results_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--quick`` is a smoke run: without --results-dir it writes beside the repository's results."""
    require("Redis", REDIS_UP)
    import benchmarks.__main__ as entry

    monkeypatch.setattr(entry, "QUICK_RESULTS_DIR", tmp_path / "quick")
    repo_report, repo_latest = report.RESULTS_MD.read_text(), (report.RESULTS_DIR / "latest.json").read_text()

    assert bench_main(["limit", "--quick", "--n", "100"]) == 0

    assert json.loads((tmp_path / "quick" / "latest.json").read_text())["settings"]["limit"]["quick"] is True
    assert (tmp_path / "quick" / "RESULTS.md").exists()
    assert report.RESULTS_MD.read_text() == repo_report
    assert (report.RESULTS_DIR / "latest.json").read_text() == repo_latest


def test_a_peer_that_cannot_run_is_a_record_with_the_reason_not_dropped() -> None:
    missing = peers.Peer("ghost", "no_such_library_for_bench", 9, lambda n: None, lambda u, p, c: [])
    with pytest.raises(peers.PeerUnavailable, match="not installed"):
        peers.available(missing)

    (record,) = e2e.peer_records("ghost (1 proc x 32)", 100, [], ["ghost is not installed"])

    assert record.rounds == 0 and "ghost is not installed" in record.note


@pytest.mark.redis
def test_a_peer_round_runs_real_worker_processes_and_leaves_its_db_empty(tmp_path: Path) -> None:
    require("Redis", REDIS_UP)
    pytest.importorskip("rq")
    rq = next(p for p in peers.PEERS if p.name == "rq")

    runs_per_s, redis_cpu_us, waiting = peers.throughput_round(
        rq, REDIS_URL, 30, 2, 1, tmp_path / "workers.log"
    )

    assert runs_per_s > 0 and redis_cpu_us > 0
    assert waiting is None or waiting >= 0
    assert redis.Redis.from_url(peers.db_url(REDIS_URL, rq.db)).dbsize() == 0


@pytest.mark.redis
def test_redis_clock_reads_a_local_servers_cpu_and_its_wait_for_a_core() -> None:
    require("Redis", REDIS_UP)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        before = RedisClock.read(client.info())
        pipe = client.pipeline(transaction=False)
        for i in range(20_000):
            pipe.set(f"bench-clock:{i % 10}", i)
        pipe.execute()
        after = RedisClock.read(client.info())
    finally:
        client.delete(*(f"bench-clock:{i}" for i in range(10)))
        client.close()
    assert after.cpu_s > before.cpu_s and after.cpu_us_per_run(before, 20_000) > 0
    # the test's Redis runs on this machine (tests/services.py starts or finds it on loopback)
    assert before.waiting_s is not None and after.waiting_s is not None
    waiting = after.waiting_us_per_run(before, 20_000)
    assert waiting is not None and waiting >= 0


def test_redis_clock_has_no_wait_for_a_server_that_is_not_a_local_redis() -> None:
    info = {"used_cpu_user": 1.5, "used_cpu_sys": 0.5, "process_id": os.getpid()}  # this is python
    clock = RedisClock.read(info)
    assert clock.cpu_s == 2.0 and clock.waiting_s is None
    assert clock.waiting_us_per_run(clock, 10) is None
    assert RedisClock.read({"used_cpu_user": 0, "used_cpu_sys": 0}).waiting_s is None  # no pid at all


def test_a_goal_short_of_its_target_reads_short_and_one_without_a_record_reads_not_measured() -> None:
    records = [
        {"scenario": "append", "system": "agentstream", "metric": "append_many / ceiling", "value": 0.4},
        {"scenario": "worker-memory", "system": "w", "metric": "RSS with 1000 running runs", "value": 40.0},
    ]

    lines = "\n".join(report.goal_lines(records))

    assert "| append_many: at least 50% of the redis-py ceiling | 0.4 x | **short** |" in lines
    assert "| worker-memory: under 150 MB at 1,000 in-flight runs | 40 MB | met |" in lines
    assert "| projector: at least 20,000 events/s | not measured | — |" in lines


def test_a_crashing_scenario_fails_the_run_and_writes_no_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there: the scenario crashes

    with pytest.raises(redis.exceptions.ConnectionError):
        bench_main(["limit", "--n", "10", "--results-dir", str(tmp_path)])

    assert not (tmp_path / "latest.json").exists()


SSE_THEN_PROJECTOR_SETUP = """
import sys
from django.conf import settings
from benchmarks import projector, sse

sse.token(sys.argv[1])  # what the sse scenario does first
projector.setup_django(sys.argv[1])  # then the projector scenario, in the same process
projector.truncate_read_models()
assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql", settings.DATABASES
"""


@pytest.mark.postgres
def test_the_projector_scenario_gets_its_database_after_sse_configured_django_in_the_same_process() -> None:
    require("PostgreSQL", POSTGRES_UP)
    db = f"bench_test_{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"} | {
        "AGENTSTREAM_BENCH_DB": db
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", SSE_THEN_PROJECTOR_SETUP, DATABASE_URL],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    finally:
        drop_database(db)


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_remeasured_scenario_keeps_its_place_in_the_results(tmp_path: Path) -> None:
    from benchmarks.common import Record, save

    def rec(scenario: str, value: float) -> Record:
        return Record(scenario=scenario, system="s", metric="m", value=value, unit="u", n=1)

    save([rec("append", 1), rec("projector", 2), rec("replay", 3)], results_dir=tmp_path)
    save([rec("projector", 20)], results_dir=tmp_path)
    save([rec("new", 4)], results_dir=tmp_path)

    records = json.loads((tmp_path / "latest.json").read_text())["records"]
    assert [(r["scenario"], r["value"]) for r in records] == [
        ("append", 1),
        ("projector", 20),
        ("replay", 3),
        ("new", 4),
    ]


@pytest.mark.parametrize("scenario", ["redis_cost", "worker_cost"])
def test_a_cost_scenario_without_valgrind_is_a_record_that_says_what_to_install(
    scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.common import Options

    module = importlib.import_module(f"benchmarks.{scenario}")
    monkeypatch.setattr(module.shutil, "which", lambda name: None)

    (record,) = asyncio.run(module.main(Options(quick=True)))

    assert record.rounds == 0 and "apt-get install valgrind" in record.note


def test_the_knowledge_scenario_without_any_pgvector_is_records_that_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks import knowledge
    from benchmarks.common import Options

    monkeypatch.setattr(knowledge, "_has_pgvector", lambda url: False)
    monkeypatch.setattr(knowledge, "binaries", lambda pgvector="0.6": None)

    records = asyncio.run(knowledge.main(Options(quick=True)))

    assert [r.system for r in records] == list(knowledge.SYSTEMS)
    assert all(r.rounds == 0 and "pgserver wheel" in r.note for r in records)


@needs_valgrind
def test_redis_cost_counts_each_phase_of_a_run_exactly_next_to_the_plain_writes() -> None:
    from benchmarks import redis_cost
    from benchmarks.common import Options

    records = asyncio.run(redis_cost.main(Options(quick=True, n=32, rounds=1)))

    by = {(r.system.split(" ")[0], r.metric): r.value for r in records}
    for system in ("agentstream", "plain"):
        phases = [by[(system, f"{phase} per run")] for phase in redis_cost.PHASES]
        assert all(p > 10_000 for p in phases)  # a run's writes cost Redis thousands of instructions
        assert by[(system, "whole run")] == pytest.approx(sum(phases))
    # the scripts do more than the bare writes (reads, checks, Lua), never less
    assert by[("agentstream", "whole run / plain writes (same round)")] > 1


@needs_valgrind
def test_worker_cost_counts_a_runs_instructions_in_a_real_worker_and_in_a_redis_py_client() -> None:
    require("Redis", REDIS_UP)
    from agentstream.core.store import redis_from_url
    from benchmarks import worker_cost

    async def both() -> list[float]:
        client = redis_from_url(REDIS_URL)
        try:
            return [
                await worker_cost.per_run(client, REDIS_URL, system, 40)
                for system in ("agentstream", worker_cost.CLIENT)
            ]
        finally:
            await client.aclose()

    ours, plain = asyncio.run(both())
    assert ours > 50_000  # a run is hundreds of Python calls: the difference of two drains saw them
    # the same writes through redis-py pipelines (a command packed and parsed in Python each) cost
    # more than the worker's scripts and its own channel: a worker slower than that is a regression
    assert plain > ours

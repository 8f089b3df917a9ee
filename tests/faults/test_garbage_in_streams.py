"""Entries written by hand into the job queues and the partition logs that do not decode: the
worker dead-letters each job with the reason, the projector records and skips each entry, and
neither crashes nor stalls its partition."""

from __future__ import annotations

import psycopg
import pytest

from tests.faults.test_redis_restart import submit
from tests.faults.topology import RedisServer, Topology, assert_runs_ended_exactly_once, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

GARBAGE_JOBS: list[dict[bytes, bytes]] = [
    {b"x": b"no run id at all"},
    {b"r": b"\xff\xfe not utf-8 \x80"},
    {b"r": b"00000000-0000-4000-8000-000000000000"},  # a run that does not exist
    {b"r": b"../../etc/passwd" * 200},
]
GARBAGE_LOG: list[dict[bytes, bytes]] = [
    {b"x": b"no envelope"},
    {b"r": b"run", b"s": b"not a number", b"t": b"run.queued", b"p": b"\xc1"},  # 0xc1: never valid msgpack
    {b"r": b"\xff\xfe", b"s": b"1", b"t": b"\x80\x81", b"p": b"\x90", b"ts": b"0", b"a": b"0", b"v": b"1"},
    {b"r": b"run", b"s": b"1", b"t": b"run.queued", b"p": b"\x90", b"ts": b"x", b"a": b"0", b"v": b"999"},
]


def test_undecodable_jobs_are_dead_lettered_and_undecodable_log_entries_skipped_without_a_stall(
    redis_server: RedisServer, topology: Topology
) -> None:
    from agentstream.core.keys import Keys

    keys = Keys(prefix=topology.env["AGENTSTREAM_KEY_PREFIX"], partitions=4)
    r = redis_server.client()
    before = [run for run in (submit(topology, steps=2) for _ in range(8)) if run]
    # every partition has a sleepy-agent queue (and its group) once a run landed there
    partitions = [p for p in range(4) if r.exists(keys.queue(p, "sleepy-agent"))]
    assert partitions
    for p in partitions:
        for fields in GARBAGE_JOBS:
            r.xadd(keys.queue(p, "sleepy-agent"), fields)  # type: ignore[arg-type]
    for p in range(4):
        for fields in GARBAGE_LOG:
            r.xadd(keys.log(p), fields)  # type: ignore[arg-type]
    after = [run for run in (submit(topology, steps=2) for _ in range(8)) if run]
    runs = before + after
    assert len(runs) == 16

    def ended_and_dead_lettered() -> bool:
        topology.assert_alive()
        ended = all(r.hget(keys.run_state(run_id), "status") == b"succeeded" for run_id in runs)
        dead = sum(r.xlen(keys.dead(p)) for p in partitions)
        return ended and dead == len(partitions) * len(GARBAGE_JOBS)

    wait_until(ended_and_dead_lettered, 45, "every run to succeed and every garbage job to be dead-lettered")
    assert_runs_ended_exactly_once(r, keys, runs)
    for p in partitions:
        assert r.xlen(keys.queue(p, "sleepy-agent")) == 0, "a garbage job is still queued"
        reasons = [fields[b"reason"] for _, fields in r.xrange(keys.dead(p))]
        assert all(reasons), reasons

    database_url = topology.env["DATABASE_URL"]

    def skipped() -> dict[str, int]:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT projection, count(*) FROM agentstream_skippedentry GROUP BY 1"
            ).fetchall()
        return {str(name): int(n) for name, n in rows}

    every = {name: 4 * len(GARBAGE_LOG) for name in ("read_model", "stores")}  # each projection records them
    wait_until(lambda: skipped() == every, 30, "every garbage log entry to be recorded")
    with psycopg.connect(database_url) as conn:
        reasons = [row[0] for row in conn.execute("SELECT reason FROM agentstream_skippedentry")]
    assert all(reasons), reasons
    # the partitions kept flowing past the garbage: the read-models match a fresh fold
    wait_until(lambda: topology.manage("verify_projections", check=False).returncode == 0, 60, "zero drift")
    topology.assert_alive()

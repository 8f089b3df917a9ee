"""The Redis ACL user that ``docs/operations.md`` (threat model) recommends is enough for the whole
production topology, and keeps agentstream away from the dangerous commands: ``agentstream
serve | worker | projector`` as that user submit, run, stream and project a run, while the user
cannot FLUSHALL, CONFIG SET, KEYS, DEBUG or read keys outside its prefix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.faults.topology import (
    TERMINAL,
    RedisServer,
    Topology,
    assert_runs_ended_exactly_once,
    environment,
    fresh_database,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

PREFIX = "acltest"
# the rule of docs/operations.md, with its prefix (``as`` by default) and password filled in
ACL_RULE = (
    "on >{password} resetkeys ~{prefix}:* resetchannels &{prefix}:* "
    "-@all +@read +@write +@stream +@hash +@set +@sortedset +@string +@list +@pubsub "
    "+@scripting +@connection +@transaction +time -@dangerous +info +config|get +client|setname "
    "-script|flush -script|kill -function"
)


def acl_rule(prefix: str, password: str) -> list[str]:
    return ACL_RULE.format(prefix=prefix, password=password).split()


@pytest.fixture
def acl_topology(redis_server: RedisServer, tmp_path: Path) -> Iterator[Topology]:
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "agentstream", *acl_rule(PREFIX, "s3cret"))
    admin.close()
    url = f"redis://agentstream:s3cret@127.0.0.1:{redis_server.port}/0"
    with fresh_database() as database_url:
        env = environment(url, database_url) | {"AGENTSTREAM_KEY_PREFIX": PREFIX}
        topo = Topology(env, tmp_path / "processes.log")
        try:
            topo.start(worker_args=("--processes", "1", "--concurrency", "4"))
            yield topo
        finally:
            topo.stop()


def test_the_documented_acl_user_runs_the_whole_topology(
    redis_server: RedisServer, acl_topology: Topology
) -> None:
    from agentstream.core.keys import Keys

    topo = acl_topology
    body = {"agent_key": "sleepy-agent", "params": {"steps": 3, "delay_ms": 20}}
    run_ids = [httpx.post(f"{topo.api}/runs/", headers=topo.headers, json=body, timeout=10) for _ in range(5)]
    assert all(r.status_code == 201 for r in run_ids), [r.text for r in run_ids]
    ids = [r.json()["id"] for r in run_ids]

    kinds: list[str] = []
    with httpx.stream("GET", f"{topo.api}/runs/{ids[0]}/events/", headers=topo.headers, timeout=30) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                kinds.append(json.loads(line[6:])["type"])
                if kinds[-1] in TERMINAL:
                    break
    assert kinds[-1] == "run.succeeded" and kinds.count("progress") == 3, kinds

    admin = redis_server.client()
    keys = Keys(prefix=PREFIX, partitions=4)

    def ended() -> bool:
        topo.assert_alive()
        return all(admin.hget(keys.run_state(i), "status") == b"succeeded" for i in ids)

    wait_until(ended, 60, "every run to succeed")
    assert_runs_ended_exactly_once(admin, keys, ids)
    wait_until(lambda: topo.manage("verify_projections", check=False).returncode == 0, 60, "zero drift")
    assert "NOPERM" not in topo.log(), topo.log()[-3000:]
    admin.close()


@pytest.mark.parametrize(
    "command",
    [
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"),
        ("KEYS", "*"),
        ("DEBUG", "SLEEP", "0"),
        ("SCRIPT", "FLUSH"),
        ("GET", "someone-elses:key"),
        ("ACL", "LIST"),
        ("SHUTDOWN", "NOSAVE"),
    ],
    ids=" ".join,
)
def test_the_documented_acl_user_cannot_run_dangerous_commands(
    redis_server: RedisServer, command: tuple[str, ...]
) -> None:
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "agentstream", *acl_rule(PREFIX, "s3cret"))
    admin.close()
    user = redis.Redis(port=redis_server.port, username="agentstream", password="s3cret")
    try:
        # DEBUG is refused before the ACL is asked (enable-debug-command is off by default)
        refusal = (
            redis.exceptions.ResponseError if command[0] == "DEBUG" else redis.exceptions.NoPermissionError
        )
        with pytest.raises(refusal):
            user.execute_command(*command)
        assert user.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}  # the start-up check
    finally:
        user.close()

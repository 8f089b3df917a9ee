"""The projector loop: groups, acks, retries, undecodable entries, takeover, checkpoints, lag, trim."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections

from agentstream.core.store import EventStore
from agentstream.projections.logs import drop_group, ensure_groups, lag, trim_logs
from agentstream.projections.projection import ReadModelProjection
from agentstream.projections.projector import Projector, ProjectorOptions
from agentstream.projections.verify import verify_log
from tests.conftest import WITH_CLUSTER, backend_url
from tests.projections import user_projection
from tests.projections.conftest import in_thread, make_workload, projector_for

pytestmark = pytest.mark.django_db(databases=["default", "embedded"], transaction=True)


@pytest.fixture(params=WITH_CLUSTER)
def redis_url(request: pytest.FixtureRequest) -> str:
    """This suite runs on Redis Cluster too."""
    return backend_url(request)


@pytest.fixture
def tool_calls_table(database: str) -> Iterator[None]:
    user_projection.create_table(connections[database])
    yield
    user_projection.drop_table(connections[database])
    connections[database].close()


async def pending_count(store: EventStore, group: str) -> int:
    total = 0
    for p in range(store.keys.partitions):
        summary: Any = await store.redis.xpending(store.keys.log(p), group)
        total += int(summary["pending"])
    return total


async def log_length(store: EventStore) -> int:
    return sum([int(await store.redis.xlen(store.keys.log(p))) for p in range(store.keys.partitions)])


async def test_undecodable_entries_are_recorded_and_acked_and_never_stall_the_partition(
    store: EventStore, database: str
) -> None:
    from agentstream.django_app.models import SkippedEntry

    log0 = store.keys.log(0)
    await store.redis.xadd(log0, {"garbage": "written by hand"})
    await store.redis.xadd(log0, {"r": "not-a-uuid", "s": "1", "t": "run.queued", "p": b"\x80"})
    await make_workload(store, runs=6)
    await store.redis.xadd(log0, {"t": "run.queued", "s": "x", "p": b"\xc1"})
    projector = projector_for(store, database)

    await projector.run(burst=True)

    skipped = await in_thread(
        lambda: list(SkippedEntry.objects.using(database).values_list("partition", "reason"))
    )
    assert len(skipped) == 3 and {p for p, _ in skipped} == {0}
    assert await pending_count(store, projector.group) == 0
    assert (await verify_log(store.redis, store.keys, database)).drift == ()


async def test_a_failing_batch_is_retried_with_backoff_and_acked_only_after_it_commits(
    store: EventStore, database: str, tool_calls_table: None
) -> None:
    await make_workload(store, runs=6)
    projection = user_projection.FailingUntilAllowed()
    projector = Projector(
        store.redis, store.keys, projection, database=database,
        options=ProjectorOptions(block_ms=50, backoff_base_s=0.001, backoff_max_s=0.01),
    )  # fmt: skip
    task = asyncio.create_task(projector.run(burst=True))
    assert await asyncio.to_thread(projection.failed_thrice.wait, 30)
    delivered = await pending_count(store, projector.group)
    assert delivered > 0  # read, failed, not acked

    projection.allowed.set()
    await asyncio.wait_for(task, timeout=60)

    assert await pending_count(store, projector.group) == 0
    calls = await in_thread(lambda: user_projection.tool_calls(connections[database]))
    assert calls and all(name == "search" for _, _, name in calls)


async def test_entries_left_pending_by_a_dead_consumer_are_taken_over(
    store: EventStore, database: str
) -> None:
    await make_workload(store, runs=6)
    dead = projector_for(store, database)
    await dead.ensure_groups()
    taken = await dead.read(block_ms=None)  # read, then "killed": never applied, never acked
    assert taken.size > 0
    survivor = projector_for(store, database, claim_idle_ms=0)

    await survivor.run(burst=True)

    assert await pending_count(store, survivor.group) == 0
    assert (await verify_log(store.redis, store.keys, database)).drift == ()


async def test_checkpoints_record_the_last_applied_entry_of_each_partition(
    store: EventStore, database: str
) -> None:
    from agentstream.django_app.models import ProjectionCheckpoint

    await make_workload(store, runs=8)
    await projector_for(store, database, batch=3).run(burst=True)

    saved = await in_thread(
        lambda: {
            c.partition: c.last_id
            for c in ProjectionCheckpoint.objects.using(database).filter(projection="read_model")
        }
    )
    for p in range(store.keys.partitions):
        last: Any = await store.redis.xrevrange(store.keys.log(p), count=1)
        if last:
            assert saved[p] == last[0][0].decode()


async def test_a_user_projection_has_its_own_group_and_sees_only_its_event_types(
    store: EventStore, database: str, tool_calls_table: None
) -> None:
    work = await make_workload(store, runs=8)
    projector = Projector(store.redis, store.keys, user_projection.ToolCalls(), database=database)

    await projector.run(burst=True)

    calls = await in_thread(lambda: user_projection.tool_calls(connections[database]))
    assert calls and {r for r, _, _ in calls} <= set(work.run_ids)
    assert projector.group == "projection:tool_calls"
    # the read-model's group has not moved: each projection reads the logs on its own
    assert (await lag(store.redis, store.keys, "projection:read_model"))[0].last_delivered_id == "-"


async def test_lag_shows_unread_pending_and_seconds_behind_then_zero_once_caught_up(
    store: EventStore, database: str
) -> None:
    await make_workload(store, runs=4)
    projector = projector_for(store, database)
    await projector.ensure_groups()
    delivery = await projector.read(block_ms=None)
    now_ms = time.time_ns() // 1_000_000 + 5000

    behind = await lag(store.redis, store.keys, projector.group, now_ms=now_ms)
    assert sum(p.pending for p in behind) == delivery.size
    assert max(p.seconds_behind for p in behind) >= 5

    assert await projector.apply(delivery)
    await projector.ack(delivery)
    await projector.run(burst=True)
    caught_up = await lag(store.redis, store.keys, projector.group)
    assert all(p.pending == 0 and p.undelivered == 0 and p.seconds_behind == 0 for p in caught_up)


async def test_trimming_never_removes_an_entry_that_a_group_has_not_acknowledged(
    store: EventStore, database: str
) -> None:
    await make_workload(store, runs=8)
    await projector_for(store, database).run(burst=True)  # read_model: everything acknowledged
    slow = "projection:slow"
    total = await log_length(store)
    # the slow group has read everything but acknowledged only the first two entries per partition
    unacked: set[tuple[int, str]] = set()
    for p in range(store.keys.partitions):
        log_key = store.keys.log(p)
        await store.redis.xgroup_create(log_key, slow, id="0")
        reply: Any = await store.redis.xreadgroup(slow, "c", {log_key: ">"})
        ids = [i.decode() for i in ([e for _, entries in reply for e, _ in entries] if reply else [])]
        if ids[:2]:
            await store.redis.xack(log_key, slow, *ids[:2])
        unacked |= {(p, i) for i in ids[2:]}

    assert await trim_logs(store.redis, store.keys, [slow], retention_s=3600) == 0  # retention keeps all
    removed = await trim_logs(store.redis, store.keys, [slow], retention_s=0)

    remaining: set[tuple[int, str]] = set()  # ids are unique per partition only
    for p in range(store.keys.partitions):
        entries: Any = await store.redis.xrange(store.keys.log(p))
        remaining |= {(p, e.decode()) for e, _ in entries}
    assert unacked <= remaining
    assert removed == total - len(remaining) > 0


async def test_trimming_keeps_the_history_of_a_configured_projection_that_never_ran(
    store: EventStore, database: str
) -> None:
    await make_workload(store, runs=4)
    await projector_for(store, database).run(burst=True)
    total = await log_length(store)

    removed = await trim_logs(
        store.redis, store.keys, [ReadModelProjection().group, "projection:not_started_yet"], retention_s=0
    )

    assert removed == 0 and await log_length(store) == total


def stale_warnings(caplog: pytest.LogCaptureFixture, group: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if group in r.getMessage()]


async def test_a_group_no_configured_projection_owns_holds_trimming_is_named_once_and_drop_releases_it(
    store: EventStore, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    await make_workload(store, runs=4)
    await projector_for(store, database).run(burst=True)
    total = await log_length(store)
    # a projection removed from PROJECTIONS, or run by another service: nobody here reads its group
    removed_group = "projection:removed"
    await ensure_groups(store.redis, store.keys, [removed_group])
    configured = [ReadModelProjection().group]

    with caplog.at_level(logging.WARNING, logger="agentstream.projections"):
        held = [await trim_logs(store.redis, store.keys, configured, retention_s=0) for _ in range(2)]

    assert held == [0, 0] and await log_length(store) == total > 0
    warnings = stale_warnings(caplog, removed_group)
    assert len(warnings) == 1 and "drop_projection NAME" in warnings[0]  # once, not every pass
    assert ReadModelProjection().group not in warnings[0]

    assert await drop_group(store.redis, store.keys, removed_group) == store.keys.partitions
    assert await trim_logs(store.redis, store.keys, configured, retention_s=0) == total
    assert await log_length(store) == 0


async def test_a_group_an_old_projector_read_holds_trimming_after_its_consumers_go_quiet(
    store: EventStore, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    await make_workload(store, runs=4)
    await projector_for(store, database).run(burst=True)
    total = await log_length(store)
    old = "projection:old_version"  # not configured here, run by the previous release
    for p in range(store.keys.partitions):
        await store.redis.xgroup_create(store.keys.log(p), old, id="0")
        await store.redis.xreadgroup(old, "old-host", {store.keys.log(p): ">"}, count=1)  # pending
    configured = [ReadModelProjection().group]

    with caplog.at_level(logging.WARNING, logger="agentstream.projections"):
        assert await trim_logs(store.redis, store.keys, configured, retention_s=0) == 0
        assert stale_warnings(caplog, old) == []  # read lately: nothing to tell yet
        # held up (a Postgres outage) past the stale limit: its entries are still kept
        assert await trim_logs(store.redis, store.keys, configured, retention_s=0, stale_after_s=0) == 0

    assert await log_length(store) == total
    assert len(stale_warnings(caplog, old)) == 1

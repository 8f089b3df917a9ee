"""The management commands, in-process, on this test's own keys (fakeredis and real Redis)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.db import connections, transaction
from django.test import override_settings
from django.utils import timezone

from agentstream.core.events import Event
from agentstream.core.store import EventStore
from agentstream.projections.logs import ensure_groups, group_info, trim_logs
from agentstream.projections.projection import ReadModelProjection
from tests.projections import user_projection
from tests.projections.conftest import in_thread, make_workload, rows

pytestmark = pytest.mark.django_db(databases=["default", "embedded"], transaction=True)


def command(name: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=io.StringIO())
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


async def log_length(store: EventStore) -> int:
    return sum([int(await store.redis.xlen(store.keys.log(p))) for p in range(store.keys.partitions)])


async def test_runprojector_burst_projects_everything_and_verify_then_reports_no_drift(
    store: EventStore, redis_url: str, key_prefix: str, database: str
) -> None:
    await make_workload(store, runs=6)
    with override_settings(AGENTSTREAM={"REDIS_URL": redis_url, "KEY_PREFIX": key_prefix, "PARTITIONS": 4}):
        before = await in_thread(command, "verify_projections", "--database", database)
        ran = await in_thread(command, "runprojector", "--burst", "--database", database)
        lag = await in_thread(command, "runprojector", "--lag")
        after = await in_thread(command, "verify_projections", "--database", database)
        archive = await in_thread(
            command, "verify_projections", "--database", database, "--source", "archive"
        )

    assert before[0] == 1 and "missing" in before[1]
    assert ran[0] == 0 and "applied" in ran[1]
    assert lag[1].count("projection:read_model") == 4 and "behind     0.00s" in lag[1]
    assert after == (0, after[1]) and "no drift" in after[1]
    assert archive[0] == 0 and "checked 6 runs" in archive[1]


async def test_an_unknown_projection_name_is_a_clear_command_error(
    store: EventStore, key_prefix: str
) -> None:
    from django.core.management.base import CommandError

    with (
        override_settings(AGENTSTREAM={"KEY_PREFIX": key_prefix, "PARTITIONS": 4}),
        pytest.raises(CommandError, match="unknown projection nope; configured: read_model"),
    ):
        await in_thread(command, "replay_projections", "nope")


def queued(run_id: str, ts_ms: int, key: str) -> Event:
    payload = {"agent_key": "echo", "owner": "user:1", "idempotency_key": key, "messages": [], "params": {}}
    return Event(run_id=run_id, seq=1, type="run.queued", payload=payload, ts_ms=ts_ms)


async def test_a_reused_idempotency_key_moves_to_the_newer_run_instead_of_stalling_the_projector(
    database: str,
) -> None:
    from agentstream.django_app.models import Run

    old, new = str(uuid.uuid4()), str(uuid.uuid4())

    def apply(*events: Event) -> None:
        with transaction.atomic(using=database):
            ReadModelProjection().handle(list(events), connections[database])

    await in_thread(apply, queued(old, 1_000, "k"))
    await in_thread(apply, queued(new, 2_000, "k"))  # the key expired and was used again
    await in_thread(apply, queued(old, 1_000, "k"), queued(new, 2_000, "k"))  # redelivered together

    keys = await in_thread(lambda: dict(Run.objects.using(database).values_list("id", "idempotency_key")))
    assert {str(k): v for k, v in keys.items()} == {old: None, new: "k"}


@pytest.fixture
def tool_calls_table(database: str) -> Iterator[None]:
    user_projection.create_table(connections[database])
    yield
    user_projection.drop_table(connections[database])
    connections[database].close()


async def test_a_projection_in_the_projections_setting_runs_and_replays_through_the_commands(
    store: EventStore, redis_url: str, key_prefix: str, database: str, tool_calls_table: None
) -> None:
    await make_workload(store, runs=6)
    configured = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": key_prefix,
        "PARTITIONS": 4,
        "PROJECTIONS": ["tests.projections.user_projection.ToolCalls"],
    }
    with override_settings(AGENTSTREAM=configured):
        ran = await in_thread(
            command, "runprojector", "--burst", "--projections", "tool_calls", "--database", database
        )
        live = await in_thread(lambda: user_projection.tool_calls(connections[database]))
        # the read-model was not asked for: its group has read nothing, the archive is empty
        archived = await in_thread(lambda: rows(database)["events"])
        await in_thread(command, "runprojector", "--burst", "--database", database)  # every projection
        replayed = await in_thread(command, "replay_projections", "tool_calls", "--database", database)
        after = await in_thread(lambda: user_projection.tool_calls(connections[database]))

    assert ran[0] == 0 and live and archived == []
    assert replayed[0] == 0 and after == live


async def test_drop_projection_lists_the_log_groups_and_drops_only_a_removed_projections_group(
    store: EventStore, redis_url: str, key_prefix: str, database: str
) -> None:
    from django.core.management.base import CommandError

    from agentstream.django_app.models import ProjectionCheckpoint

    await make_workload(store, runs=2)
    keys = store.keys
    await ensure_groups(store.redis, keys, ["projection:removed", "projection:busy"])
    for p in range(keys.partitions):  # an old-version projector still reads this one
        await store.redis.xreadgroup("projection:busy", "old-host", {keys.log(p): ">"}, count=1)
    checkpoints = ProjectionCheckpoint.objects.using(database)
    await in_thread(lambda: checkpoints.create(projection="removed", partition=0, updated_at=timezone.now()))
    settings = {"REDIS_URL": redis_url, "KEY_PREFIX": key_prefix, "PARTITIONS": 4}
    with override_settings(AGENTSTREAM=settings):
        await in_thread(command, "runprojector", "--burst", "--database", database)
        configured = [ReadModelProjection().group]  # the others acknowledged everything too
        total = await log_length(store)
        held = await trim_logs(store.redis, keys, configured, retention_s=0)
        listed = await in_thread(command, "drop_projection")
        refusals = []
        for name in ("read_model", "busy", "nope"):
            with pytest.raises(CommandError) as refused:
                await in_thread(command, "drop_projection", name, "--database", database)
            refusals.append(str(refused.value))
        dropped = await in_thread(command, "drop_projection", "removed", "--database", database)
        forced = await in_thread(command, "drop_projection", "busy", "--force", "--database", database)
        released = await trim_logs(store.redis, keys, configured, retention_s=0)

    lines = {line.split()[0]: line for line in listed[1].splitlines()}
    assert held == 0 and total > 0  # neither unowned group had acknowledged: both held trimming
    assert lines["projection:read_model"].endswith("  configured")
    assert lines["projection:removed"].endswith("stale: holds trimming until drop_projection removed")
    assert lines["projection:busy"].endswith("read lately: holds trimming")
    assert "is configured" in refusals[0] and "stop that projector" in refusals[1]
    assert "no group projection:nope" in refusals[2]
    assert dropped == (0, "dropped projection:removed from 4 partition logs, and its checkpoints\n")
    assert forced[0] == 0
    left = {g for p in range(keys.partitions) for g in await group_info(store.redis, keys.log(p))}
    assert "projection:removed" not in left and "projection:busy" not in left
    assert not await in_thread(lambda: checkpoints.filter(projection="removed").exists())
    assert released == total and await log_length(store) == 0  # dropped: trimming proceeds

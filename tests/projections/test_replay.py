"""Replay: from the archive (complete) and from the logs (recent), beside the live read-model."""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections

from agentstream.consumers.stores import now_us
from agentstream.core.events import EventType
from agentstream.core.records import StoreKind, store_payload
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore
from agentstream.projections.logs import trim_logs
from agentstream.projections.projection import ReadModelProjection
from agentstream.projections.projector import REDIS_UNAVAILABLE, Projector
from agentstream.projections.replay import Progress, replay_archive, replay_events
from agentstream.projections.stores import StoresProjection
from agentstream.projections.verify import log_events
from tests.projections import user_projection
from tests.projections.conftest import in_thread, make_workload, projector_for, rows
from tests.projections.test_stores import ALICE
from tests.projections.test_stores import snapshot as stores_snapshot
from tests.services import POSTGRES_UP, free_port, require

pytestmark = pytest.mark.django_db(databases=["default", "embedded"], transaction=True)


@pytest.fixture
def tool_calls_table(database: str) -> Iterator[None]:
    user_projection.create_table(connections[database])
    yield
    user_projection.drop_table(connections[database])
    connections[database].close()


def read_models(database: str) -> dict[str, Any]:
    found = rows(database)
    return {
        "runs": found["runs"],
        "conversations": found["conversations"],
        "checkpoints": found["checkpoints"],
    }


def wipe_read_models(database: str) -> None:
    with connections[database].cursor() as cursor:
        cursor.execute("DELETE FROM agentstream_run")
        cursor.execute("DELETE FROM agentstream_conversation")


async def test_replay_from_the_archive_into_an_empty_read_model_reproduces_the_live_rows(
    store: EventStore, database: str
) -> None:
    await make_workload(store, runs=15)
    await projector_for(store, database).run(burst=True)
    live = await in_thread(read_models, database)
    await in_thread(wipe_read_models, database)

    applied = await in_thread(replay_archive, [ReadModelProjection()], database)

    assert applied == len(await in_thread(lambda: rows(database)["events"])) + len(
        await in_thread(lambda: rows(database)["conversation_events"])
    )
    assert await in_thread(read_models, database) == live


async def test_replay_from_the_logs_into_an_empty_database_reproduces_the_live_rows(
    store: EventStore, database: str
) -> None:
    other = "embedded" if database == "default" else "default"
    if other == "default":
        require("PostgreSQL", POSTGRES_UP)
    await make_workload(store, runs=15)
    await projector_for(store, database).run(burst=True)
    events = [e async for e in log_events(store.redis, store.keys)]

    await in_thread(replay_events, [ReadModelProjection()], [events[:20], events[20:]], other)

    assert await in_thread(rows, other) == await in_thread(rows, database)


async def test_a_user_projection_added_later_is_backfilled_from_the_archive(
    store: EventStore, database: str, tool_calls_table: None, store_settings: Settings
) -> None:
    await make_workload(store, runs=12)
    await projector_for(store, database).run(burst=True)
    # the logs forget: everything acknowledged and past retention is trimmed away
    await trim_logs(store.redis, store.keys, [ReadModelProjection().group], retention_s=0)
    assert not [e async for e in log_events(store.redis, store.keys)]

    await in_thread(
        functools.partial(replay_archive, [user_projection.ToolCalls()], database, settings=store_settings)
    )

    archived = await in_thread(
        lambda: sorted((str(e["run_id"]), e["seq"], e["payload"]["name"]) for e in rows(database)["events"]
                       if e["type"] == "tool.call")
    )  # fmt: skip
    assert archived
    assert await in_thread(lambda: user_projection.tool_calls(connections[database])) == archived


async def test_replaying_from_a_lagging_archive_keeps_what_the_projections_groups_acknowledged(
    store: EventStore, database: str, tool_calls_table: None, store_settings: Settings
) -> None:
    await make_workload(store, runs=6)
    await projector_for(store, database).run(burst=True)
    # the read-model lags (or is down): these reach the stores and tool_calls groups only
    await make_workload(store, runs=6, seed=8)
    city = store_payload(StoreKind.MEMORY, ALICE, "city", now_us(), value="Lyon")
    await store.owner_event(ALICE, EventType.MEMORY_SET, city)
    projections = [StoresProjection(), user_projection.ToolCalls()]
    for projection in projections:
        await Projector(store.redis, store.keys, projection, database=database).run(burst=True)
    live = await in_thread(projected, database)
    archived = await in_thread(lambda: {(str(e["run_id"]), e["seq"]) for e in rows(database)["events"]})
    assert live["memory"] and any((r, s) not in archived for r, s, _ in live["tool_calls"])

    await in_thread(functools.partial(replay_archive, projections, database, settings=store_settings))

    assert await in_thread(projected, database) == live
    # and once the read-model catches up and every group has run again: still the same rows
    await projector_for(store, database).run(burst=True)
    for projection in projections:
        await Projector(store.redis, store.keys, projection, database=database).run(burst=True)
    assert await in_thread(projected, database) == live


async def test_a_replay_that_cannot_read_the_logs_refuses_and_leaves_the_rows_as_they_were(
    store: EventStore, database: str, tool_calls_table: None, store_settings: Settings
) -> None:
    await make_workload(store, runs=4)
    await Projector(store.redis, store.keys, user_projection.ToolCalls(), database=database).run(burst=True)
    live = await in_thread(lambda: user_projection.tool_calls(connections[database]))
    nowhere = store_settings.with_overrides(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    with pytest.raises(REDIS_UNAVAILABLE):
        await in_thread(
            functools.partial(replay_archive, [user_projection.ToolCalls()], database, settings=nowhere)
        )

    assert live and await in_thread(lambda: user_projection.tool_calls(connections[database])) == live


def projected(database: str) -> dict[str, Any]:
    return {
        "tool_calls": user_projection.tool_calls(connections[database]),
        "memory": stores_snapshot(database)["agentstream_memory"],
    }


async def test_readers_see_the_old_rows_until_the_replay_commits(store: EventStore, database: str) -> None:
    await make_workload(store, runs=10)
    await projector_for(store, database).run(burst=True)
    live = await in_thread(read_models, database)
    seen_by_reader: list[int] = []

    def replay_while_reading() -> None:
        reader = connections.create_connection(database)

        def look(_: Progress) -> None:
            with reader.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM agentstream_run")
                seen_by_reader.append(cursor.fetchone()[0])

        try:
            replay_archive([ReadModelProjection()], database, page=2, progress=look)
        finally:
            reader.close()

    await in_thread(replay_while_reading)

    assert len(seen_by_reader) > 2
    assert set(seen_by_reader) == {len(live["runs"])}  # never an empty or half-built read-model
    assert await in_thread(read_models, database) == live


async def test_the_replay_command_shows_a_progress_bar_with_an_eta(store: EventStore, database: str) -> None:
    await make_workload(store, runs=4)
    await projector_for(store, database).run(burst=True)
    out, err = io.StringIO(), io.StringIO()

    await in_thread(
        lambda: call_command(
            "replay_projections", "read_model", "--database", database, "--page", "5", stdout=out, stderr=err
        )
    )

    assert "ETA" in err.getvalue() and "100.0%" in err.getvalue()
    assert "replayed" in out.getvalue()

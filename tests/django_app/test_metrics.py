"""/metrics scraped after a scripted workload: figures from Redis, the read-model and this process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.store import SubmitRequest
from agentstream.django_app import metrics
from agentstream.django_app.models import Run
from agentstream.projections.projection import ReadModelProjection
from agentstream.projections.projector import Projector, ProjectorOptions
from tests.consumers.helpers import burst
from tests.django_app.conftest import run, store_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def ended_runs_counted_afresh() -> Iterator[None]:
    """Each test's first scrape counts the ended runs of its own database (the count is kept per
    process, and the tests before flushed theirs)."""
    metrics.ended_runs.forget()
    yield
    metrics.ended_runs.forget()
    metrics.ended_runs.clock = metrics.time.monotonic


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = Client().get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scripted_workload(values: dict[str, Any]) -> None:
    """3 echo runs succeed; 1 flaky run retries once, fails and is dead-lettered; 2 runs of an agent
    no worker serves wait, one of them read by a worker that has not acked it (pending)."""

    async def go() -> None:
        store = store_for(values)
        try:
            for _ in range(3):
                await store.submit(
                    SubmitRequest("echo", "user:1", messages=[{"role": "user", "content": "x"}])
                )
            await store.submit(SubmitRequest("flaky", "user:1", max_attempts=2))
            await burst(store, agent_keys=["echo", "flaky"])
            for _ in range(2):
                await store.submit(SubmitRequest("other", "user:1"))
            await store.ensure_groups(["other"])
            for p in range(store.keys.partitions):
                reply = await store.redis.xreadgroup(
                    WORKERS_GROUP, "stuck-worker", {store.keys.queue(p, "other"): ">"}, count=1
                )
                if reply:
                    break
            projector = Projector(
                store.redis, store.keys, ReadModelProjection(), options=ProjectorOptions(block_ms=50)
            )
            await projector.run(burst=True)
        finally:
            await store.redis.aclose()

    run(go)


def test_metrics_after_a_scripted_workload_show_runs_queues_dead_letters_retries_and_projector_lag(
    agentstream: dict[str, Any], settings: Any
) -> None:
    settings.AGENTSTREAM = {**agentstream, "RETRY_BACKOFF_BASE": 0.01, "RETRY_BACKOFF_MAX": 0.05}
    scripted_workload(settings.AGENTSTREAM)

    m = scrape()

    assert m[("agentstream_runs", (("agent_key", "echo"), ("status", "succeeded")))] == 3
    assert m[("agentstream_runs", (("agent_key", "flaky"), ("status", "failed")))] == 1
    assert m[("agentstream_runs", (("agent_key", "other"), ("status", "queued")))] == 2
    assert m[("agentstream_run_attempts_after_first", (("agent_key", "flaky"),))] == 1
    assert m[("agentstream_run_attempts_after_first", (("agent_key", "echo"),))] == 0
    assert m[("agentstream_queue_waiting", (("agent_key", "other"),))] == 1
    assert m[("agentstream_queue_pending", (("agent_key", "other"),))] == 1
    assert m[("agentstream_queue_oldest_pending_age_seconds", (("agent_key", "other"),))] >= 0
    assert m[("agentstream_queue_waiting", (("agent_key", "echo"),))] == 0
    assert m[("agentstream_dead_letters", ())] == 1
    assert m[("agentstream_delayed_runs", ())] == 0
    assert m[("agentstream_sse_clients", ())] == 0
    # deployment-wide counters, counted by the Lua scripts in Redis (not by any process)
    assert m[("agentstream_retries_total", ())] == 1
    assert m[("agentstream_reclaims_total", ())] == 0
    assert m[("agentstream_dead_lettered_total", ())] == 1
    assert m[("agentstream_runs_finished_total", (("status", "succeeded"),))] == 3
    assert m[("agentstream_runs_finished_total", (("status", "failed"),))] == 1
    assert m[("agentstream_log_events_total", ())] == m[("agentstream_log_entries", ())] > 0
    lags = {labels: v for (name, labels), v in m.items() if name == "agentstream_projector_unread"}
    assert len(lags) == 4 and set(lags.values()) == {0}  # 4 partitions, the read-model caught up
    assert all(dict(labels)["group"] == "projection:read_model" for labels in lags)


def test_projector_lag_counts_entries_a_projection_has_not_read(agentstream: dict[str, Any]) -> None:
    async def go() -> None:
        store = store_for(agentstream)
        try:
            await store.submit(SubmitRequest("echo", "user:1"))
            projector = Projector(
                store.redis, store.keys, ReadModelProjection(), options=ProjectorOptions(block_ms=50)
            )
            await projector.run(burst=True)
            for _ in range(3):
                await store.submit(SubmitRequest("echo", "user:1"))
        finally:
            await store.redis.aclose()

    run(go)
    m = scrape()
    unread = sum(v for (name, _), v in m.items() if name == "agentstream_projector_unread")
    assert unread == 3
    assert m[("agentstream_runs", (("agent_key", "echo"), ("status", "queued")))] == 1


class Listener:
    def deliver(self, frames: Any) -> bool:
        return True

    def close(self) -> None:
        pass


def test_sse_clients_counts_the_subscribers_of_this_process_hub(agentstream: dict[str, Any]) -> None:
    from agentstream.django_app.api.backend import api_backend

    store_thread = api_backend()
    hub = store_thread.hub
    listeners = [Listener(), Listener()]
    for listener in listeners:
        store_thread.call(lambda listener=listener: hub.subscribe("run-1", 0, listener))  # type: ignore[misc]
    assert scrape()[("agentstream_sse_clients", ())] == 2

    async def unsubscribe_all() -> None:  # on the hub's own loop, as the SSE views do
        for listener in listeners:
            hub.unsubscribe("run-1", listener)

    store_thread.call(unsubscribe_all)
    assert scrape()[("agentstream_sse_clients", ())] == 0


def add_runs(agent_key: str, status: str, n: int, attempt: int = 1) -> None:
    Run.objects.bulk_create(
        Run(id=uuid.uuid4(), agent_key=agent_key, status=status, attempt=attempt) for _ in range(n)
    )


def runs_of(m: dict[Any, float], agent_key: str, status: str) -> float:
    return m.get(("agentstream_runs", (("agent_key", agent_key), ("status", status))), 0)


def test_a_scrape_counts_the_active_runs_each_time_and_the_ended_ones_every_ttl(
    agentstream: dict[str, Any],
) -> None:
    now_s = [1000.0]
    metrics.ended_runs.clock = lambda: now_s[0]
    add_runs("a", "succeeded", 2)
    add_runs("a", "failed", 1, attempt=3)
    add_runs("a", "running", 1, attempt=2)
    m = scrape()
    assert (runs_of(m, "a", "succeeded"), runs_of(m, "a", "failed"), runs_of(m, "a", "running")) == (2, 1, 1)
    assert m[("agentstream_run_attempts_after_first", (("agent_key", "a"),))] == 2 + 1

    add_runs("a", "succeeded", 5)
    add_runs("a", "queued", 4)
    now_s[0] += metrics.ENDED_RUNS_TTL_S - 1
    m = scrape()
    assert runs_of(m, "a", "queued") == 4  # at once
    assert runs_of(m, "a", "succeeded") == 2  # the count kept, not a scan of the table

    now_s[0] += 1
    m = scrape()
    assert (runs_of(m, "a", "succeeded"), runs_of(m, "a", "queued")) == (7, 4)


def test_the_active_runs_are_counted_from_their_partial_index(agentstream: dict[str, Any]) -> None:
    """The count on every scrape reads the index of the few runs not ended, never the table (the
    query's status list must imply the index's condition, or the planner cannot take it)."""
    add_runs("a", "succeeded", 50)
    add_runs("a", "queued", 2)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET enable_seqscan = off")  # a table this small is cheaper to scan
            try:
                cursor.execute("EXPLAIN " + metrics.ACTIVE_RUNS_SQL)
                plan = " ".join(row[0] for row in cursor.fetchall())
            finally:
                cursor.execute("RESET enable_seqscan")
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + metrics.ACTIVE_RUNS_SQL)
            plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    assert "as_run_active_by_agent" in plan, plan

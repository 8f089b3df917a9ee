"""/metrics scraped after a scripted workload: figures from Redis, the read-model and this process."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.store import SubmitRequest
from agentstream.projections.projection import ReadModelProjection
from agentstream.projections.projector import Projector, ProjectorOptions
from tests.consumers.helpers import burst
from tests.django_app.conftest import run, store_for

pytestmark = pytest.mark.django_db(transaction=True)


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

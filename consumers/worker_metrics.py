"""A worker process's own counters for Prometheus (``--metrics-port``; the ``prometheus`` extra).

Only what happens inside this process is counted here — attempts by outcome (``retrying`` is a
retry), reclaims of expired leases, runs in progress, LLM tokens by model. Queue depths, pending jobs and lag are
deployment-wide and come from Redis at the ``/metrics`` view (``agentstream.django_app.metrics``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentstream.consumers.llm.traced import token_meter

if TYPE_CHECKING:
    from agentstream.consumers.worker import Worker


class WorkerCollector(Collector):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        labels = ["worker_id", "agent_keys"]
        key = [self.worker.worker_id, ",".join(self.worker.agent_keys)]
        attempts = CounterMetricFamily(
            "agentstream_worker_attempts",
            "attempts this process ended, by outcome",
            labels=[*labels, "outcome"],
        )
        for outcome, count in sorted(self.worker.outcomes.items()):
            attempts.add_metric([*key, outcome.value], count)
        yield attempts
        reclaims = CounterMetricFamily(
            "agentstream_worker_reclaims", "jobs this process took over from an expired lease", labels=labels
        )
        reclaims.add_metric(key, self.worker.reclaims)
        yield reclaims
        tokens = CounterMetricFamily(
            "agentstream_llm_tokens", "LLM tokens used by this process's agents", labels=["model", "kind"]
        )
        for (model, kind), count in sorted(token_meter.tokens.items()):
            tokens.add_metric([model, kind], count)
        yield tokens
        running = GaugeMetricFamily(
            "agentstream_worker_running", "attempts running in this process", labels=labels
        )
        running.add_metric(key, self.worker.running)
        yield running


def serve_worker_metrics(worker: Worker, port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` for this worker on a daemon thread (and count LLM tokens from now on)."""
    token_meter.enabled = True
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(worker))
    start_http_server(port, addr=addr, registry=registry)

"""Prometheus metrics at a view you mount: ``path("metrics", agentstream.django_app.metrics.metrics_view)``.

Needs the ``prometheus`` extra (``prometheus-client``). Every figure is read at scrape time from
where the truth is, never from this process's counters, so any one API process can be scraped for
the whole deployment:

* Redis (``core.inspect.deployment_status``, ``projections.logs.lag``): queue waiting / pending /
  consumers / oldest pending age per agent key, delayed runs, dead letters, log length, and each
  projection group's pending, unread and seconds behind per partition;
* Redis counters, deployment-wide and monotonic (``rate()`` them): events appended to the logs
  (``entries-added``, so ``rate(agentstream_log_events_total[1m])`` is events/s), retries, reclaims,
  dead letters and runs finished by status, counted by the Lua scripts in the transitions themselves;
* the read-model: runs by agent key and status, and attempts beyond the first (retries plus
  reclaims after a lost lease) by agent key. The runs not yet ended (queued, running) are counted
  on every scrape from the partial index ``as_run_active_by_agent`` (the few among millions); the
  ended ones, which need a scan of the whole table, are counted at most every
  ``ENDED_RUNS_TTL_S`` per process and kept in between (both are gauges; for the rate of runs
  ending, ``rate()`` the Redis counter ``agentstream_runs_finished_total``);
* this process: the SSE clients its hubs hold.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.db import connection
from django.http import HttpRequest, HttpResponse

from agentstream.core.inspect import Counters, DeploymentStatus, deployment_status
from agentstream.django_app.api import backend
from agentstream.django_app.api.backend import api_backend
from agentstream.django_app.models import ACTIVE_STATUSES
from agentstream.django_app.sse import hub as sse_hub
from agentstream.projections.logs import PartitionLag, lag
from agentstream.projections.sql import RUN

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - exercised by users without the extra
    CONTENT_TYPE_LATEST = ""
    Collector = object  # type: ignore[assignment,misc]

MISSING_EXTRA = "the /metrics view needs prometheus-client: pip install 'agentstream[prometheus]'"


class DeploymentCollector(Collector):
    """Collects on every scrape: two pipelined Redis round trips, lag per group, one SQL query on
    an index (and, every ``ENDED_RUNS_TTL_S``, one over the whole runs table)."""

    def collect(self) -> Iterator[Metric]:
        backend = api_backend()
        status, lags = backend.call(lambda: _redis_figures(backend.store))
        yield from _queue_metrics(status)
        yield from _counter_metrics(status.counters)
        yield from _lag_metrics(lags)
        yield from _run_metrics(_runs_by_agent_and_status())
        clients = GaugeMetricFamily("agentstream_sse_clients", "SSE clients connected to this process")
        clients.add_metric([], _sse_clients())
        yield clients


def _sse_clients() -> int:
    """Clients of this process's hubs: one per ASGI event loop, and the WSGI store thread's."""
    hubs = set(sse_hub._hubs.values())
    if backend._current is not None:
        hubs.add(backend._current.hub)
    return sum(h.clients for h in hubs)


async def _redis_figures(store: Any) -> tuple[DeploymentStatus, list[PartitionLag]]:
    status = await deployment_status(store)
    lags: list[PartitionLag] = []
    for group in status.projections:
        lags += await lag(store.redis, store.keys, group.group)
    return status, lags


def _queue_metrics(status: DeploymentStatus) -> Iterator[Metric]:
    labels = ["agent_key"]
    waiting = GaugeMetricFamily(
        "agentstream_queue_waiting", "jobs not yet delivered to a worker", labels=labels
    )
    pending = GaugeMetricFamily(
        "agentstream_queue_pending",
        "jobs delivered and not acknowledged (runs being worked on)",
        labels=labels,
    )
    consumers = GaugeMetricFamily(
        "agentstream_queue_consumers", "workers in the queue's group", labels=labels
    )
    oldest = GaugeMetricFamily(
        "agentstream_queue_oldest_pending_age_seconds", "age of the oldest pending job", labels=labels
    )
    for queue in status.queues:
        waiting.add_metric([queue.agent_key], queue.waiting)
        pending.add_metric([queue.agent_key], queue.pending)
        consumers.add_metric([queue.agent_key], queue.consumers)
        oldest.add_metric([queue.agent_key], queue.oldest_pending_age_s)
    yield from (waiting, pending, consumers, oldest)
    yield GaugeMetricFamily(
        "agentstream_delayed_runs", "retries and scheduled runs not yet due", value=status.delayed
    )
    yield GaugeMetricFamily(
        "agentstream_dead_letters", "entries in the dead-letter streams", value=status.dead_letters
    )
    yield GaugeMetricFamily(
        "agentstream_log_entries", "entries in the partition logs", value=status.log_length
    )


def _counter_metrics(counters: Counters) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "agentstream_log_events",
        "state events appended to the partition logs (rate() is events/s)",
        value=counters.log_events,
    )
    yield CounterMetricFamily(
        "agentstream_retries", "attempts that ended in run.retrying", value=counters.retries
    )
    yield CounterMetricFamily(
        "agentstream_reclaims",
        "attempts begun on a job whose worker's lease expired (crash, stall, shutdown)",
        value=counters.reclaims,
    )
    yield CounterMetricFamily(
        "agentstream_dead_lettered", "jobs written to the dead-letter streams", value=counters.dead_letters
    )
    finished = CounterMetricFamily(
        "agentstream_runs_finished", "runs that reached a terminal status", labels=["status"]
    )
    for status, count in sorted(counters.finished.items()):
        finished.add_metric([status], count)
    yield finished


def _lag_metrics(lags: list[PartitionLag]) -> Iterator[Metric]:
    labels = ["group", "partition"]
    pending = GaugeMetricFamily(
        "agentstream_projector_pending", "log entries read by a projection, not yet committed", labels=labels
    )
    unread = GaugeMetricFamily(
        "agentstream_projector_unread", "log entries a projection has not read", labels=labels
    )
    behind = GaugeMetricFamily(
        "agentstream_projector_lag_seconds",
        "age of the oldest entry a projection has not applied",
        labels=labels,
    )
    for item in lags:
        key = [item.group, str(item.partition)]
        pending.add_metric(key, item.pending)
        unread.add_metric(key, item.undelivered)
        behind.add_metric(key, item.seconds_behind)
    yield from (pending, unread, behind)


RunCounts = list[tuple[str, str, int, int]]  # agent key, status, runs, attempts beyond the first

# How long this process keeps its count of the ended runs (a scan of the whole table: about 0.35 s
# a million runs on PostgreSQL), so that a scrape every 15 s does not scan the table every 15 s.
ENDED_RUNS_TTL_S = 300.0

_COUNT = (
    f"SELECT agent_key, status, COUNT(*), "
    f"COALESCE(SUM(CASE WHEN attempt > 1 THEN attempt - 1 ELSE 0 END), 0) FROM {RUN} "
)
# The same list as the index's condition, written out: a planner takes a partial index only for
# a query whose condition implies the index's, and SQLite does not look into bound parameters.
assert all(s.isidentifier() for s in ACTIVE_STATUSES), ACTIVE_STATUSES  # statuses are words
_IN_ACTIVE = "status IN (" + ", ".join(f"'{s}'" for s in ACTIVE_STATUSES) + ")"
ACTIVE_RUNS_SQL = f"{_COUNT}WHERE {_IN_ACTIVE} GROUP BY agent_key, status"
ENDED_RUNS_SQL = f"{_COUNT}WHERE NOT {_IN_ACTIVE} GROUP BY agent_key, status"


class _EndedRuns:
    """This process's count of the ended runs, counted again once it is ``ENDED_RUNS_TTL_S`` old."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one scan at a time when scrapes overlap
        self._rows: RunCounts = []
        self._counted_at_s: float | None = None
        self.clock: Callable[[], float] = time.monotonic

    def rows(self) -> RunCounts:
        with self._lock:
            now_s = self.clock()
            if self._counted_at_s is None or now_s - self._counted_at_s >= ENDED_RUNS_TTL_S:
                self._rows = _count(ENDED_RUNS_SQL)
                self._counted_at_s = now_s
            return self._rows

    def forget(self) -> None:
        """Count them again at the next scrape (tests; a process that changed its database)."""
        with self._lock:
            self._counted_at_s = None


ended_runs = _EndedRuns()


def _runs_by_agent_and_status() -> RunCounts:
    return _count(ACTIVE_RUNS_SQL) + ended_runs.rows()


def _count(sql: str) -> RunCounts:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [(str(a), str(s), int(n), int(extra)) for a, s, n, extra in cursor.fetchall()]


def _run_metrics(rows: RunCounts) -> Iterator[Metric]:
    runs = GaugeMetricFamily(
        "agentstream_runs",
        f"runs in the read-model (queued and running ones at each scrape, the ended ones every {ENDED_RUNS_TTL_S:.0f} s)",
        labels=["agent_key", "status"],
    )
    restarts: dict[str, int] = {}
    for agent_key, status, count, extra_attempts in rows:
        runs.add_metric([agent_key, status], count)
        restarts[agent_key] = restarts.get(agent_key, 0) + extra_attempts
    yield runs
    again = GaugeMetricFamily(
        "agentstream_run_attempts_after_first",
        "attempts beyond each run's first: retries plus reclaims after a lost lease",
        labels=["agent_key"],
    )
    for agent_key, extra_attempts in sorted(restarts.items()):
        again.add_metric([agent_key], extra_attempts)
    yield again


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus exposition of ``DeploymentCollector`` (mount it behind your own access rules)."""
    if not CONTENT_TYPE_LATEST:
        return HttpResponse(MISSING_EXTRA, status=501, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeploymentCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

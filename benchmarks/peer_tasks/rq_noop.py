"""RQ: ``rq worker --burst -w rq.worker.SimpleWorker --url URL bench`` (one job at a time per process)."""

from __future__ import annotations

from benchmarks.peer_tasks import mark_done


def noop() -> None:
    mark_done()

"""Celery (Redis broker): ``celery -A benchmarks.peer_tasks.celery_noop worker --pool threads -c C``."""

from __future__ import annotations

from celery import Celery

from benchmarks.peer_tasks import mark_done, redis_url

app = Celery("bench", broker=redis_url())
app.conf.update(
    task_ignore_result=True,
    task_default_queue="bench",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop() -> None:
    mark_done()

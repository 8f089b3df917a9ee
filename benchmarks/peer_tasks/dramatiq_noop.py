"""Dramatiq (Redis broker): ``dramatiq benchmarks.peer_tasks.dramatiq_noop --processes P --threads C``."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.peer_tasks import mark_done, redis_url

dramatiq.set_broker(RedisBroker(url=redis_url()))


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop() -> None:
    mark_done()

"""taskiq (taskiq-redis streams broker): ``taskiq worker benchmarks.peer_tasks.taskiq_noop:broker``."""

from __future__ import annotations

from taskiq_redis import RedisStreamBroker

from benchmarks.peer_tasks import mark_done, redis_url

# consumer_id "0": the group also reads what was queued before the workers started
broker = RedisStreamBroker(url=redis_url(), queue_name="bench", consumer_id="0")


@broker.task(task_name="noop")
async def noop() -> None:
    mark_done()

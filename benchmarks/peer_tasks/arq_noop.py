"""arq: ``arq benchmarks.peer_tasks.arq_noop.WorkerSettings``."""

from __future__ import annotations

from typing import Any, ClassVar

from arq.connections import RedisSettings

from benchmarks.peer_tasks import concurrency, mark_done, redis_url


async def noop(ctx: dict[str, Any]) -> None:
    mark_done()


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = RedisSettings.from_dsn(redis_url())
    max_jobs = concurrency()
    keep_result = 0
    poll_delay = 0.05
    log_results = False


if __name__ == "__main__":  # arq's CLI logs every job at INFO; the peers all log at WARNING, as ours do
    import logging

    from arq import run_worker

    logging.basicConfig(level=logging.WARNING)
    run_worker(WorkerSettings)  # type: ignore[arg-type]

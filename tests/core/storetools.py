"""Test helpers that act as a minimal worker: read a job from a queue, begin its attempt."""

from __future__ import annotations

from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.store import Claim, Dropped, EventStore


async def read_jobs(
    store: EventStore, partition: int, agent_key: str, consumer: str = "w1"
) -> list[tuple[str, str]]:
    """All new jobs of one queue as ``(job_id, run_id)``, now pending for ``consumer``."""
    await store.ensure_groups([agent_key])
    reply = await store.redis.xreadgroup(
        WORKERS_GROUP, consumer, {store.keys.queue(partition, agent_key): ">"}, count=1000
    )
    jobs: list[tuple[str, str]] = []
    for _, entries in reply or []:
        for job_id, fields in entries:
            jobs.append((job_id.decode(), fields[b"r"].decode()))
    return jobs


async def claim(store: EventStore, run_id: str, agent_key: str = "a", worker: str = "w1") -> Claim:
    """Read the run's job and begin an attempt on it (fails the test if the job is not there)."""
    partition = store.keys.run_partition(run_id)
    jobs = dict((r, j) for j, r in await read_jobs(store, partition, agent_key, worker))
    assert run_id in jobs, f"no job for run {run_id} in its queue"
    result = await store.begin_attempt(run_id, jobs[run_id], worker, agent_key)
    assert isinstance(result, Claim), result
    return result


async def job_of(store: EventStore, run_id: str) -> str:
    job = await store.redis.hget(store.keys.run_state(run_id), "job")
    assert job is not None
    return str(job.decode())


async def begin_again(
    store: EventStore, run_id: str, agent_key: str = "a", worker: str = "w2"
) -> Claim | Dropped:
    """What a second worker does after reclaiming the job (XAUTOCLAIM): begin a new attempt."""
    return await store.begin_attempt(run_id, await job_of(store, run_id), worker, agent_key)
